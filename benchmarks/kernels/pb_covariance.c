/* PolyBench/C 4.2.1 "covariance" (means, centring, then the upper triangle of the covariance
 * matrix: j runs from i), after Pouchet et al.'s PolyBench suite (OSU license); re-written here,
 * sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define M 200
#define N 240

static double data[N][M], cov[M][M], mean[M];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 28;
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < M; j++) data[i][j] = (double)(i * j + t) / M;
        for (int j = 0; j < M; j++) {
            mean[j] = 0.0;
            for (int i = 0; i < N; i++) mean[j] += data[i][j];
            mean[j] /= N;
        }
        for (int i = 0; i < N; i++)
            for (int j = 0; j < M; j++) data[i][j] -= mean[j];
        for (int i = 0; i < M; i++)
            for (int j = i; j < M; j++) {
                cov[i][j] = 0.0;
                for (int k = 0; k < N; k++) cov[i][j] += data[k][i] * data[k][j];
                cov[i][j] /= (N - 1.0);
                cov[j][i] = cov[i][j];
            }
        sum += cov[t % M][M - 1] + cov[0][0];
    }
    printf("covariance %.6f\n", sum);
    return 0;
}
