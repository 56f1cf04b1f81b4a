/* PolyBench/C 4.2.1 "seidel-2d" (Gauss-Seidel 9-point stencil, in place: a loop-carried
 * recurrence in both dimensions), after Pouchet et al.'s PolyBench suite (OSU license);
 * re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 200

static double A[N][N];

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 300;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) A[i][j] = ((double)i * (j + 2) + 2) / N;
    for (int t = 0; t < steps; t++)
        for (int i = 1; i <= N - 2; i++)
            for (int j = 1; j <= N - 2; j++)
                A[i][j] = (A[i - 1][j - 1] + A[i - 1][j] + A[i - 1][j + 1] + A[i][j - 1] + A[i][j] + A[i][j + 1] +
                           A[i + 1][j - 1] + A[i + 1][j] + A[i + 1][j + 1]) / 9.0;
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += A[i][(i * 3) % N];
    printf("seidel-2d %.6f\n", sum);
    return 0;
}
