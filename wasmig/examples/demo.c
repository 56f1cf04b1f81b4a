/* wasmig demo: the primes below a limit (default 10000) with a sieve of Eratosthenes.
 * Small, recognisable and easy to check: there are 1229 primes below 10000, the largest is
 * 9973 and they add up to 5736396. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long limit = argc > 1 ? atol(argv[1]) : 10000;
    if (limit < 2 || limit > 10000000) {
        fprintf(stderr, "limit must be between 2 and 10000000\n");
        return 2;
    }
    unsigned char *composite = calloc((size_t)limit, 1);
    if (!composite) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (long i = 2; i * i < limit; i++)
        if (!composite[i])
            for (long j = i * i; j < limit; j += i) composite[j] = 1;

    long count = 0, largest = 0, twins = 0;
    uint64_t sum = 0;
    uint32_t hash = 2166136261u; /* FNV-1a over the primes, as 32-bit little-endian words */
    for (long i = 2; i < limit; i++) {
        if (composite[i]) continue;
        if (largest && i - largest == 2) twins++;
        count++;
        sum += (uint64_t)i;
        largest = i;
        for (int b = 0; b < 4; b++) hash = (hash ^ ((uint32_t)i >> (8 * b) & 0xff)) * 16777619u;
    }
    free(composite);

    printf("primes below %ld: %ld\n", limit, count);
    printf("largest: %ld, sum: %llu, twin pairs: %ld\n", largest, (unsigned long long)sum, twins);
    printf("checksum: %08x\n", hash);
    return 0;
}
