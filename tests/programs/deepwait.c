/* A deep call stack that waits: the migration tests stop it deep down, where restoring its
 * frames on another engine can run out of stack, or before it goes deep, on an engine that may
 * not have the room.
 *   deepwait [DEPTH [TICKS [SLEEP_MS [TICKS_FIRST]]]]   (defaults 1000, 20, 50, 0)
 * Prints TICKS_FIRST numbered lines SLEEP_MS apart, then recurses DEPTH frames, each keeping a
 * dozen values live across its call (so that its frame, and its rewind copy's, are large), then
 * at the bottom prints TICKS numbered lines SLEEP_MS apart (WASI poll_oneoff: where a migration
 * stops it) and returns through every frame, which folds its values into the result. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int ticks = 20, sleep_ms = 50;

static void tick(const char *where, int n) {
    for (int i = 0; i < n; i++) {
        printf("%s %d\n", where, i);
        fflush(stdout);
        usleep((useconds_t)sleep_ms * 1000);
    }
}

static double down(int depth, double x) {
    if (depth == 0) {
        tick("tick", ticks);
        return x;
    }
    double a = x * 0.5 + depth % 10, b = a * 0.5 + 1, c = b - (depth % 4) * 0.25, d = c * c * 0.01 + a;
    double e = d + b * 0.125, f = e * 0.5 + c, g = f - a * 0.5, h = g * 0.25 + d * 0.125;
    int i = depth * 7 + 3, j = i ^ (depth << 2), k = j * 13 + i, l = k - j / 3;
    double r = down(depth - 1, h * 0.5 + (double)(l & 15));
    return r * 0.5 + (a - b + c - d + e - f + g - h) * 0.01 + (double)((i + j + k + l) & 7);
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 1000;
    if (argc > 2) ticks = atoi(argv[2]);
    if (argc > 3) sleep_ms = atoi(argv[3]);
    printf("depth %d\n", depth);
    fflush(stdout);
    tick("first", argc > 4 ? atoi(argv[4]) : 0);
    printf("result %.6f\n", down(depth, 0.5));
    return 0;
}
