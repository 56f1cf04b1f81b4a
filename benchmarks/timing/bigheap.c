/* A guest memory of a given size, full of non-uniform data, then light work forever, for
 * checkpoint/restore time against memory size. Grows linear memory to argv[1] MiB in total
 * (default 64) with memory.grow directly -- wasi-libc's malloc grows memory by about twice a
 * large request, which would make a "16 MiB" guest 48 MiB -- and fills every 64-bit word of the
 * new region with a value derived from its index (no 64 KiB page is all-zero or equal to
 * another). Then prints "ready" and keeps updating a few words of that region for argv[2] rounds
 * (default effectively forever), doing no I/O, and prints a checksum at the end. malloc (stdio's
 * buffer) keeps working afterwards: sbrk grows memory past the region. Build with a small stack
 * (e.g. -Wl,-z,stack-size=1048576) so the memory is mostly this region, not zig's 16 MiB stack. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define PAGE 65536u

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    long long rounds = argc > 2 ? atoll(argv[2]) : 1LL << 62;
    size_t have = __builtin_wasm_memory_size(0), want = mib * (1024 * 1024 / PAGE);
    if (want <= have) want = have + 1;
    if (__builtin_wasm_memory_grow(0, want - have) == (size_t)-1) {
        printf("cannot grow memory to %zu MiB\n", mib);
        return 1;
    }
    uint64_t *mem = (uint64_t *)(have * PAGE);
    size_t words = (want - have) * (PAGE / 8);
    for (size_t i = 0; i < words; i++) mem[i] = (i + 1) * 0x9E3779B97F4A7C15ull ^ (i >> 7);
    printf("ready\n");
    fflush(stdout);
    uint64_t sum = 0;
    for (long long r = 0; r < rounds; r++) {
        size_t i = (size_t)((unsigned long long)r * 7919u % words);
        mem[i] = mem[i] * 6364136223846793005ull + 1442695040888963407ull;
        sum ^= mem[i];
    }
    printf("bigheap %llu\n", (unsigned long long)sum);
    return 0;
}
