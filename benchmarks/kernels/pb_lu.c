/* PolyBench/C 4.2.1 "lu" (LU decomposition without pivoting, in place: triangular loop nests
 * whose inner loops run from 0 to i or j, a recurrence through A), after Pouchet et al.'s
 * PolyBench suite (OSU license); re-written here (a diagonally dominant matrix, so every pivot
 * stays away from zero), sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 260

static double A[N][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 21;
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < N; j++) A[i][j] = (double)((i * 7 + j * 3 + t) % N) / N;
            A[i][i] += N;
        }
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < i; j++) {
                for (int k = 0; k < j; k++) A[i][j] -= A[i][k] * A[k][j];
                A[i][j] /= A[j][j];
            }
            for (int j = i; j < N; j++)
                for (int k = 0; k < i; k++) A[i][j] -= A[i][k] * A[k][j];
        }
        sum += A[N - 1][N - 1] + A[t % N][(t * 5) % N];
    }
    printf("lu %.6f\n", sum);
    return 0;
}
