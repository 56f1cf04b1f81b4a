/* A large, non-uniform heap and then light work forever, for checkpoint/restore time against
 * memory size: mallocs argv[1] MiB (default 64), fills every 64-bit word with a value derived
 * from its index (so no 64 KiB page is all-zero or equal to another), prints "ready", then
 * keeps updating a few words of it in a loop for argv[2] rounds (default effectively forever),
 * doing no I/O, and prints a checksum at the end. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    long rounds = argc > 2 ? atol(argv[2]) : 4000000000000000000L;
    size_t words = mib * 1024 * 1024 / 8;
    uint64_t *mem = malloc(words * 8);
    if (!mem) {
        printf("malloc of %zu MiB failed\n", mib);
        return 1;
    }
    for (size_t i = 0; i < words; i++) mem[i] = (i + 1) * 0x9E3779B97F4A7C15ull ^ (i >> 7);
    printf("ready\n");
    fflush(stdout);
    uint64_t sum = 0;
    for (long r = 0; r < rounds; r++) {
        size_t i = (size_t)(r * 7919) % words;
        mem[i] = mem[i] * 6364136223846793005ull + 1442695040888963407ull;
        sum ^= mem[i];
    }
    printf("bigheap %llu\n", (unsigned long long)sum);
    return 0;
}
