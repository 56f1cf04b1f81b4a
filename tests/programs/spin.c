/* Loops that store nothing: the polls a checkpoint request is seen at must still read the
 * request every iteration. spin() is entered once (its entry poll dominates the loops) and its
 * inner loop runs `inner` iterations for each of `outer` rounds (the outer loop's poll dominates
 * the inner one). Prints a line, flushed, before it starts, and the result at the end. */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) static unsigned long long spin(unsigned outer, unsigned long long inner) {
    unsigned long long x = 1, s = 0;
    for (unsigned r = 0; r < outer; r++) {
        for (unsigned long long i = 0; i < inner; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            s += x >> 60;
        }
        s ^= r;
    }
    return s;
}

int main(int argc, char **argv) {
    unsigned outer = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 2;
    unsigned long long inner = argc > 2 ? strtoull(argv[2], 0, 10) : 1000;
    printf("spinning %u x %llu\n", outer, inner);
    fflush(stdout);
    printf("%llu\n", spin(outer, inner));
    return 0;
}
