/* PolyBench/C 4.2.1 "heat-3d" (a 7-point 3-D heat equation stencil, two sweeps per step: a
 * three-deep nest), after Pouchet et al.'s PolyBench suite (OSU license); re-written here, sized
 * to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 40

static double A[N][N][N], B[N][N][N];

int main(int argc, char **argv) {
    int tsteps = argc > 1 ? atoi(argv[1]) : 240;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            for (int k = 0; k < N; k++) A[i][j][k] = B[i][j][k] = (double)(i + j + (N - k)) * 10 / N;
    for (int t = 1; t <= tsteps; t++) {
        for (int i = 1; i < N - 1; i++)
            for (int j = 1; j < N - 1; j++)
                for (int k = 1; k < N - 1; k++)
                    B[i][j][k] = 0.125 * (A[i + 1][j][k] - 2.0 * A[i][j][k] + A[i - 1][j][k]) +
                                 0.125 * (A[i][j + 1][k] - 2.0 * A[i][j][k] + A[i][j - 1][k]) +
                                 0.125 * (A[i][j][k + 1] - 2.0 * A[i][j][k] + A[i][j][k - 1]) + A[i][j][k];
        for (int i = 1; i < N - 1; i++)
            for (int j = 1; j < N - 1; j++)
                for (int k = 1; k < N - 1; k++)
                    A[i][j][k] = 0.125 * (B[i + 1][j][k] - 2.0 * B[i][j][k] + B[i - 1][j][k]) +
                                 0.125 * (B[i][j + 1][k] - 2.0 * B[i][j][k] + B[i][j - 1][k]) +
                                 0.125 * (B[i][j][k + 1] - 2.0 * B[i][j][k] + B[i][j][k - 1]) + B[i][j][k];
    }
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += A[i][(i * 3) % N][(i * 7) % N];
    printf("heat-3d %.6f\n", sum);
    return 0;
}
