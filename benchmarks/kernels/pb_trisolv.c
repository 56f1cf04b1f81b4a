/* PolyBench/C 4.2.1 "trisolv" (forward substitution with a lower triangular matrix: the inner
 * loop's trip count is the row number, each row depends on all earlier ones), after Pouchet et
 * al.'s PolyBench suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 600

static double L[N][N], x[N], b[N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 900;
    for (int i = 0; i < N; i++)
        for (int j = 0; j <= i; j++) L[i][j] = (double)(i + N - j + 1) * 2 / N;
    double sum = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) b[i] = i + (t % 5);
        for (int i = 0; i < N; i++) {
            x[i] = b[i];
            for (int j = 0; j < i; j++) x[i] -= L[i][j] * x[j];
            x[i] = x[i] / L[i][i];
        }
        sum += x[N - 1] + x[t % N];
    }
    printf("trisolv %.6f\n", sum);
    return 0;
}
