/* A guest for benchmarks/migration.py.
 *   dirtier MIB RATE   fills MIB MiB of heap with pseudo-random bytes, prints "ready", then
 * dirties about RATE MiB/s: every 10 ms it writes one word into each of the next few 64 KiB
 * pages (a page touched is a page to resend), forever. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? (size_t)atoi(argv[1]) : 16;
    double rate = argc > 2 ? atof(argv[2]) : 0;
    size_t words = mib * (1u << 20) / 8;
    uint64_t *heap = malloc(words * 8);
    if (!heap) return 2;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < words; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        heap[i] = x;
    }
    printf("ready\n");
    fflush(stdout);
    size_t pages = words / 8192, next = 0;
    double owed = 0;
    for (;;) {
        owed += rate * 16 / 100; /* pages per 10 ms */
        while (owed >= 1 && pages) {
            heap[(next % pages) * 8192 + (x & 8191)] ^= ++x;
            next += 7;
            owed -= 1;
        }
        usleep(10000);
    }
}
