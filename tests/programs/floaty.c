/* Floating-point heavy: a small n-body integration in doubles, a float (f32) recurrence, and
 * the library's sqrt/exp/sin/pow, printed with every bit (%a) each round, so any difference in
 * rounding between engines or hosts (or a byte-order slip) shows.
 *   floaty [ROUNDS]   (default 30) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define N 5

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 30;
    double x[N], y[N], vx[N], vy[N], m[N];
    for (int i = 0; i < N; i++) {
        x[i] = cos(i * 1.3) * (i + 1);
        y[i] = sin(i * 0.7) * (i + 1);
        vx[i] = -y[i] * 0.1;
        vy[i] = x[i] * 0.1;
        m[i] = 1.0 / (i + 2);
    }
    float f = 0.1f;
    for (int r = 0; r < rounds; r++) {
        for (int step = 0; step < 20; step++) {
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++) {
                    if (i == j) continue;
                    double dx = x[j] - x[i], dy = y[j] - y[i];
                    double d2 = dx * dx + dy * dy + 1e-3, inv = 1.0 / (d2 * sqrt(d2));
                    vx[i] += dx * m[j] * inv * 0.01;
                    vy[i] += dy * m[j] * inv * 0.01;
                }
            for (int i = 0; i < N; i++) {
                x[i] += vx[i] * 0.01;
                y[i] += vy[i] * 0.01;
            }
            f = f * 3.7f * (1.0f - f);
        }
        double e = 0;
        for (int i = 0; i < N; i++) e += 0.5 * m[i] * (vx[i] * vx[i] + vy[i] * vy[i]);
        printf("round %d e=%a f=%a g=%a\n", r, e, (double)f, pow(fabs(x[0]) + 1, 0.3) + exp(-y[1] * y[1]));
    }
    return 0;
}
