/* PolyBench/C 4.2.1 "atax" (y = A^T (A x)), after Pouchet et al.'s PolyBench suite
 * (https://github.com/MatthiasJReisinger/PolyBenchC-4.2.1, OSU license); re-written here, sizes
 * and repetitions chosen to run ~0.3 s on wasmtime. Prints a checksum. */
#include <stdio.h>
#include <stdlib.h>

#define M 380
#define N 420

static double A[M][N], x[N], y[N], tmp[M];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 360;
    for (int i = 0; i < N; i++) x[i] = 1.0 + (double)i / N;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) A[i][j] = (double)((i + j) % N) / (5.0 * M);
    double sum = 0.0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < N; i++) y[i] = 0.0;
        for (int i = 0; i < M; i++) {
            tmp[i] = 0.0;
            for (int j = 0; j < N; j++) tmp[i] += A[i][j] * x[j];
            for (int j = 0; j < N; j++) y[j] += A[i][j] * tmp[i];
        }
        sum += y[r % N];
        x[r % N] += 0.001;
    }
    printf("atax %.6f\n", sum);
    return 0;
}
