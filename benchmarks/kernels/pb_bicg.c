/* PolyBench/C 4.2.1 "bicg" (the BiCG sub-kernel: s = A^T r, q = A p), after Pouchet et al.'s
 * PolyBench suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define M 390
#define N 410

static double A[N][M], s[M], q[N], p[M], r[N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 600;
    for (int i = 0; i < M; i++) p[i] = (double)(i % M) / M;
    for (int i = 0; i < N; i++) {
        r[i] = (double)(i % N) / N;
        for (int j = 0; j < M; j++) A[i][j] = (double)(i * (j + 1) % N) / N;
    }
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < M; i++) s[i] = 0.0;
        for (int i = 0; i < N; i++) {
            q[i] = 0.0;
            for (int j = 0; j < M; j++) {
                s[j] += r[i] * A[i][j];
                q[i] += A[i][j] * p[j];
            }
        }
        sum += s[t % M] + q[t % N];
        p[t % M] += 0.001;
    }
    printf("bicg %.6f\n", sum);
    return 0;
}
