/* PolyBench/C 4.2.1 "mvt" (x1 += A y1, x2 += A^T y2), after Pouchet et al.'s PolyBench suite
 * (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 400

static double A[N][N], x1[N], x2[N], y1[N], y2[N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 360;
    for (int i = 0; i < N; i++) {
        x1[i] = (double)(i % N) / N;
        x2[i] = (double)((i + 1) % N) / N;
        y1[i] = (double)((i + 3) % N) / N;
        y2[i] = (double)((i + 4) % N) / N;
        for (int j = 0; j < N; j++) A[i][j] = (double)(i * j % N) / N;
    }
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) x1[i] = x1[i] + A[i][j] * y1[j];
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) x2[i] = x2[i] + A[j][i] * y2[j];
        for (int i = 0; i < N; i++) {
            x1[i] *= 0.5;
            x2[i] *= 0.5;
        }
    }
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += x1[i] + x2[i];
    printf("mvt %.6f\n", sum);
    return 0;
}
