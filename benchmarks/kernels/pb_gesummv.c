/* PolyBench/C 4.2.1 "gesummv" (y = alpha A x + beta B x), after Pouchet et al.'s PolyBench
 * suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 400

static double A[N][N], B[N][N], tmp[N], x[N], y[N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 360;
    double alpha = 1.5, beta = 1.2;
    for (int i = 0; i < N; i++) {
        x[i] = (double)(i % N) / N;
        for (int j = 0; j < N; j++) {
            A[i][j] = (double)((i * j + 1) % N) / N;
            B[i][j] = (double)((i * j + 2) % N) / N;
        }
    }
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) {
            tmp[i] = 0.0;
            y[i] = 0.0;
            for (int j = 0; j < N; j++) {
                tmp[i] = A[i][j] * x[j] + tmp[i];
                y[i] = B[i][j] * x[j] + y[i];
            }
            y[i] = alpha * tmp[i] + beta * y[i];
        }
        sum += y[t % N];
        x[t % N] += 0.001;
    }
    printf("gesummv %.6f\n", sum);
    return 0;
}
