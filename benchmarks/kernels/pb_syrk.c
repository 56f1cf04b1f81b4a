/* PolyBench/C 4.2.1 "syrk" (symmetric rank-k update of the lower triangle, C = alpha A A^T +
 * beta C: j runs to i), after Pouchet et al.'s PolyBench suite (OSU license); re-written here,
 * sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define M 200
#define N 240

static double A[N][M], C[N][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 20;
    double alpha = 1.5, beta = 1.2, sum = 0.0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < M; j++) A[i][j] = (double)((i * j + 1) % N) / N;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) C[i][j] = (double)((i * j + 2 + t) % M) / M;
        for (int i = 0; i < N; i++) {
            for (int j = 0; j <= i; j++) C[i][j] *= beta;
            for (int k = 0; k < M; k++)
                for (int j = 0; j <= i; j++) C[i][j] += alpha * A[i][k] * A[j][k];
        }
        sum += C[N - 1][t % N] + C[t % N][0];
    }
    printf("syrk %.6f\n", sum);
    return 0;
}
