/* Sieve of Eratosthenes over a byte array, repeated; prints the prime count and a checksum. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT 4000000

static unsigned char composite[LIMIT + 1];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 16;
    unsigned long long check = 0;
    int count = 0;
    for (int r = 0; r < reps; r++) {
        memset(composite, 0, sizeof composite);
        count = 0;
        for (int i = 2; i <= LIMIT; i++) {
            if (!composite[i]) {
                count++;
                check = check * 31 + (unsigned)i;
                for (long long j = (long long)i * i; j <= LIMIT; j += i) composite[j] = 1;
            }
        }
    }
    printf("sieve %d %llu\n", count, check);
    return 0;
}
