/* PolyBench/C 4.2.1 "cholesky" (in-place Cholesky factorisation: triangular nests, a square
 * root per row), after Pouchet et al.'s PolyBench suite (OSU license); re-written here (a
 * symmetric, diagonally dominant matrix), sized to run ~0.3 s on wasmtime. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define N 300

static double A[N][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 28;
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) {
            for (int j = 0; j <= i; j++) A[i][j] = A[j][i] = (double)((i + j + t) % N) / N;
            A[i][i] += N;
        }
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < i; j++) {
                for (int k = 0; k < j; k++) A[i][j] -= A[i][k] * A[j][k];
                A[i][j] /= A[j][j];
            }
            for (int k = 0; k < i; k++) A[i][i] -= A[i][k] * A[i][k];
            A[i][i] = sqrt(A[i][i]);
        }
        sum += A[N - 1][N - 1] + A[N - 1][t % N];
    }
    printf("cholesky %.6f\n", sum);
    return 0;
}
