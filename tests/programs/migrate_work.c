/* A program to migrate while it runs.
 *   migrate_work [ROUNDS [KIB [SLEEP_MS [GATE]]]]   (defaults 30, 256, 20, none)
 * Fills a KIB-KiB heap buffer, then for ROUNDS rounds rewrites one 4 KiB stretch of it (so
 * pre-copy has pages to resend), prints the round's running checksum and sleeps SLEEP_MS (a
 * WASI poll_oneoff the migration can stop in). Ends with the checksum of the whole buffer.
 * With GATE (a path in a preopened directory) it goes on past ROUNDS, round after round, until
 * the file GATE exists: a test then ends it once its migrations are done, however slowly a loaded
 * machine ran them, instead of hoping they fit in a fixed run time. N rounds print the same lines
 * whether or not a gate made it N. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 30;
    size_t words = (size_t)(argc > 2 ? atoi(argv[2]) : 256) * 1024 / 4;
    int sleep_ms = argc > 3 ? atoi(argv[3]) : 20;
    const char *gate = argc > 4 ? argv[4] : NULL;
    uint32_t *buf = malloc(words * 4);
    if (!buf) return 2;
    for (size_t i = 0; i < words; i++) buf[i] = (uint32_t)i * 2654435761u;
    uint32_t h = 2166136261u;
    for (int r = 0; r < rounds || (gate && access(gate, F_OK) != 0); r++) {
        size_t at = ((size_t)r * 7919 * 1024) % words;
        for (size_t k = 0; k < 1024 && at + k < words; k++) {
            buf[at + k] ^= h + (uint32_t)k;
            h = (h ^ buf[at + k]) * 16777619u;
        }
        printf("round %d %08x\n", r, h);
        fflush(stdout);
        if (sleep_ms) usleep((useconds_t)sleep_ms * 1000);
    }
    for (size_t i = 0; i < words; i++) h = (h ^ buf[i]) * 16777619u;
    printf("done %08x\n", h);
    return 0;
}
