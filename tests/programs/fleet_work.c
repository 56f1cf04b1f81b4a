/* A fleet job (tests/test_ray_fleet.py, benchmarks/fleet.py): computes, prints and writes a file.
 *   fleet_work NAME [STEPS [MS]]   (defaults 40 steps, 50 ms apart)
 * STEPS 0: steps until the file NAME.stop appears in "data" (looked for before each step), so that
 * a test can move the job as many times as it needs without racing the program's end.
 * Each step mixes a checksum, prints "NAME step I CHECKSUM" on stdout and appends the same line to
 * the file NAME.out in the preopened directory "data" (when there is one); "NAME start" and
 * "NAME end" go to stderr. Deterministic: the same arguments give the same bytes, wherever it
 * is stopped and restored. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "job";
    int steps = argc > 2 ? atoi(argv[2]) : 40;
    int ms = argc > 3 ? atoi(argv[3]) : 50;
    char path[256];
    snprintf(path, sizeof path, "data/%s.out", name);
    FILE *out = fopen(path, "w");
    fprintf(stderr, "%s start\n", name);
    unsigned h = 2166136261u;
    char stop[256];
    snprintf(stop, sizeof stop, "data/%s.stop", name);
    for (int i = 0; steps ? i < steps : access(stop, F_OK) != 0; i++) {
        for (int k = 0; k < 20000; k++) h = (h ^ (unsigned)(i * 31 + k)) * 16777619u;
        printf("%s step %d %08x\n", name, i, h);
        fflush(stdout);
        if (out) {
            fprintf(out, "%s step %d %08x\n", name, i, h);
            fflush(out);
        }
        if (ms) usleep((useconds_t)ms * 1000);
    }
    if (out) fclose(out);
    fprintf(stderr, "%s end %08x\n", name, h);
    return 0;
}
