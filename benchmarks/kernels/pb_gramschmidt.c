/* PolyBench/C 4.2.1 "gramschmidt" (QR decomposition by modified Gram-Schmidt: for each column k,
 * a norm with a square root, then loops over the columns after k), after Pouchet et al.'s
 * PolyBench suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define M 160
#define N 180

static double A[M][N], R[N][N], Q[M][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 16;
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) A[i][j] = ((double)((i * j + t) % M) / M) * 100 + 10 + (i == j ? 50 : 0);
        for (int k = 0; k < N; k++) {
            double nrm = 0.0;
            for (int i = 0; i < M; i++) nrm += A[i][k] * A[i][k];
            R[k][k] = sqrt(nrm);
            for (int i = 0; i < M; i++) Q[i][k] = A[i][k] / R[k][k];
            for (int j = k + 1; j < N; j++) {
                R[k][j] = 0.0;
                for (int i = 0; i < M; i++) R[k][j] += Q[i][k] * A[i][j];
                for (int i = 0; i < M; i++) A[i][j] = A[i][j] - Q[i][k] * R[k][j];
            }
        }
        sum += R[N - 1][N - 1] + Q[t % M][t % N];
    }
    printf("gramschmidt %.6f\n", sum);
    return 0;
}
