/* Deep recursion through function pointers, with floating point: the cross-engine checkpoint
 * tests stop it anywhere, including 10,000 frames deep, and finish it on another engine.
 *   deeprec [DEPTH]   (default 10000)
 * Two mutually recursive functions are called through a table of function pointers; every frame
 * keeps a double and an int live across its call, and the deepest frame runs a small loop. */
#include <stdio.h>
#include <stdlib.h>

typedef double (*step_fn)(int depth, int limit, double acc);

static double down_a(int depth, int limit, double acc);
static double down_b(int depth, int limit, double acc);
static step_fn volatile table[2] = {down_a, down_b};

static double bottom(double acc) {
    double x = acc;
    for (int i = 0; i < 50; i++) x = x * 0.999 + (double)i / 7.0;
    return x;
}

static double down_a(int depth, int limit, double acc) {
    if (depth >= limit) return bottom(acc);
    double here = acc * 1.0000001 + depth;
    double r = table[(depth * 7) & 1](depth + 1, limit, here);
    return r - here / 3.0 + (depth & 3);
}

static double down_b(int depth, int limit, double acc) {
    if (depth >= limit) return bottom(acc);
    int keep = depth * 31 + 7;
    double r = table[depth & 1](depth + 1, limit, acc + 0.5);
    return r * 0.9999999 + keep % 11;
}

int main(int argc, char **argv) {
    int limit = argc > 1 ? atoi(argv[1]) : 10000;
    double total = 0;
    for (int round = 0; round < 3; round++) {
        double r = down_a(0, limit, round + 0.25);
        total += r;
        printf("round %d: %.6f\n", round, r);
    }
    printf("total %.6f\n", total);
    return 0;
}
