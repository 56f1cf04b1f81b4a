/* A large, changing linear memory, for checkpoints under load: allocates argv[1] MiB (default
 * 64) and in each of argv[2] rounds (default 20) rewrites one 64-bit word in every argv[3]
 * bytes (default 4096) of it, so every 64 KiB wasm page is non-zero and changes every round
 * (nothing for the page store to deduplicate), then prints the round's running checksum.
 * Deterministic: the output depends on the arguments only. Its lines are read while it runs, so
 * stdout is line-buffered even when it is a pipe (wasi-libc, like any C library, fully buffers a
 * stdout that is not a terminal, and wasmig reports a pipe as one since it matches wasmtime). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    size_t stride = argc > 3 ? strtoul(argv[3], NULL, 10) / 8 : 512;
    size_t words = mib * 1024 * 1024 / 8;
    if (stride == 0) stride = 1;
    uint64_t *mem = malloc(words * 8);
    if (!mem) {
        printf("malloc of %zu MiB failed\n", mib);
        return 1;
    }
    uint64_t sum = 0;
    for (int r = 0; r < rounds; r++) {
        for (size_t i = 0; i < words; i += stride) {
            mem[i] = mem[i] * 6364136223846793005ull + (i ^ (uint64_t)r) + 1442695040888963407ull;
            sum = (sum ^ mem[i]) * 0x100000001B3ull;
        }
        printf("round %d sum %016llx\n", r, (unsigned long long)sum);
    }
    printf("done\n");
    return 0;
}
