/* Deep recursion, for checkpoint latency with many frames on the stack: argv[1] rounds (default
 * effectively forever) of descending argv[2] levels (default 3000) through a non-inlined
 * recursive function that does a little arithmetic in every frame on the way down and up, so a
 * checkpoint request lands at a random depth. Prints a checksum when the rounds end. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) static uint64_t down(uint32_t depth, uint64_t acc) {
    acc = acc * 6364136223846793005ull + depth;
    for (int i = 0; i < 8; i++) acc ^= acc >> 13, acc *= 0x100000001B3ull;
    if (depth == 0) return acc;
    uint64_t r = down(depth - 1, acc);
    return (r >> 1) ^ (r << 7) ^ acc; /* not an accumulator: keeps the recursion a recursion */
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 2000000000L;
    uint32_t depth = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 3000;
    uint64_t sum = 0;
    for (long r = 0; r < rounds; r++) sum += down(depth, (uint64_t)r);
    printf("deeprec %llu\n", (unsigned long long)sum);
    return 0;
}
