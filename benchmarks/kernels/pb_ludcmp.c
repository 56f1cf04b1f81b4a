/* PolyBench/C 4.2.1 "ludcmp" (LU decomposition, then forward and back substitution: triangular
 * nests with scalar accumulators, loops running down as well as up), after Pouchet et al.'s
 * PolyBench suite (OSU license); re-written here (diagonally dominant), sized to run ~0.3 s on
 * wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 260

static double A[N][N], b[N], x[N], y[N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 14;
    double total = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) {
            b[i] = (i + 1) / (double)N / 2.0 + 4;
            for (int j = 0; j < N; j++) A[i][j] = (double)((i * 3 + j * 5 + t) % N) / N;
            A[i][i] += N;
        }
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < i; j++) {
                double w = A[i][j];
                for (int k = 0; k < j; k++) w -= A[i][k] * A[k][j];
                A[i][j] = w / A[j][j];
            }
            for (int j = i; j < N; j++) {
                double w = A[i][j];
                for (int k = 0; k < i; k++) w -= A[i][k] * A[k][j];
                A[i][j] = w;
            }
        }
        for (int i = 0; i < N; i++) {
            double w = b[i];
            for (int j = 0; j < i; j++) w -= A[i][j] * y[j];
            y[i] = w;
        }
        for (int i = N - 1; i >= 0; i--) {
            double w = y[i];
            for (int j = i + 1; j < N; j++) w -= A[i][j] * x[j];
            x[i] = w / A[i][i];
        }
        total += x[0] + x[t % N];
    }
    printf("ludcmp %.6f\n", total);
    return 0;
}
