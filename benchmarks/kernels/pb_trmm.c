/* PolyBench/C 4.2.1 "trmm" (triangular matrix multiply, B = alpha A^T B with A unit lower
 * triangular: a triangular loop nest whose inner trip count shrinks with i), after Pouchet et
 * al.'s PolyBench suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define M 200
#define N 240

static double A[M][M], B[M][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 24;
    double alpha = 1.5, sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < M; i++) {
            for (int j = 0; j < i; j++) A[i][j] = (double)((i + j + t) % M) / M;
            A[i][i] = 1.0;
            for (int j = 0; j < N; j++) B[i][j] = (double)((N + (i - j)) % N) / N;
        }
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                for (int k = i + 1; k < M; k++) B[i][j] += A[k][i] * B[k][j];
                B[i][j] = alpha * B[i][j];
            }
        sum += B[t % M][t % N] + B[M - 1][N - 1 - t];
    }
    printf("trmm %.6f\n", sum);
    return 0;
}
