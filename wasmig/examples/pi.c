/* wasmig demo: the first DIGITS decimal digits of pi (default 1000), 20 digits a round.
 *   pi OUTDIR [DIGITS [SLEEP_MS]]
 * A Rabinowitz-Wagon spigot, four digits at a time: its whole state is an array of 3.5
 * remainders per digit in linear memory that every round rewrites -- lose it and the digits are
 * gone. Every round prints a progress line and appends a line to OUTDIR/pi.txt, a file kept open
 * for the whole run, then sleeps SLEEP_MS (default 0; the demo paces the run so that it can be
 * caught mid-way). At the end the program reads the file back from its start, checks it against
 * what it computed and prints the digits' checksum. Its output and file are deterministic: no
 * clock, no randomness, no host path in either. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GROUPS_PER_ROUND 5 /* 20 digits a round */

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: pi OUTDIR [DIGITS [SLEEP_MS]]\n");
        return 2;
    }
    long digits = argc > 2 ? atol(argv[2]) : 1000;
    int sleep_ms = argc > 3 ? atoi(argv[3]) : 0;
    if (digits < 20 || digits > 100000 || digits % 20) {
        fprintf(stderr, "DIGITS must be a multiple of 20 between 20 and 100000\n");
        return 2;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/pi.txt", argv[1]);
    FILE *out = fopen(path, "w+");
    if (!out) {
        perror(path);
        return 3;
    }
    long c = digits / 4 * 14; /* 3.5 remainders per digit */
    int64_t *f = malloc((size_t)(c + 1) * sizeof *f);
    if (!f) return 4;
    for (long b = 0; b <= c; b++) f[b] = 2000; /* 10000 / 5 */
    int64_t e = 0;
    int rounds = (int)(digits / 20);
    uint32_t hash = 2166136261u;
    for (int r = 1; r <= rounds; r++) {
        char group[21];
        for (int k = 0; k < GROUPS_PER_ROUND; k++) {
            int64_t d = 0;
            int64_t g = c * 2;
            for (long b = c;;) {
                d += f[b] * 10000;
                f[b] = d % --g;
                d /= g--;
                if (--b == 0) break;
                d *= b;
            }
            snprintf(group + 4 * k, 5, "%04d", (int)(e + d / 10000));
            e = d % 10000;
            c -= 14;
        }
        for (int i = 0; i < 20; i++) hash = (hash ^ (uint8_t)group[i]) * 16777619u;
        fprintf(out, "%4d %s\n", r, group);
        fflush(out);
        printf("round %2d/%d: digits %4d-%4d  %s  checksum %08x\n", r, rounds, (r - 1) * 20 + 1, r * 20, group,
               hash);
        fflush(stdout);
        if (sleep_ms) usleep((useconds_t)sleep_ms * 1000);
    }
    free(f);

    /* read the whole file back from its start */
    if (fseek(out, 0, SEEK_SET) != 0) return 5;
    static char all[100001];
    char line[64];
    long n = 0;
    int lines = 0;
    while (fgets(line, sizeof line, out)) {
        int r;
        char group[21];
        if (sscanf(line, "%d %20s", &r, group) != 2 || r != lines + 1 || strlen(group) != 20) return 6;
        memcpy(all + n, group, 20);
        n += 20;
        lines++;
    }
    all[n] = 0;
    uint32_t check = 2166136261u;
    for (long i = 0; i < n; i++) check = (check ^ (uint8_t)all[i]) * 16777619u;
    long size = ftell(out);
    fprintf(out, "# %ld digits, checksum %08x\n", n, check);
    fclose(out);
    printf("read back %s: %d lines, %ld bytes, checksum %08x (%s)\n", path, lines, size, check,
           check == hash ? "as computed" : "DIFFERENT");
    printf("pi = %c.%.40s...%s\n", all[0], all + 1, all + n - 10);
    return check == hash ? 0 : 1;
}
