/* PolyBench/C 4.2.1 "durbin" (Levinson-Durbin recursion for a Toeplitz system: every step k
 * runs inner loops of k iterations that depend on the previous step's results), after Pouchet
 * et al.'s PolyBench suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 400

static double r[N], y[N], z[N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 700;
    double total = 0.0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) r[i] = (double)(N + 1 - i + (t % 7)) / (N * 200.0);
        double alpha = -r[0], beta = 1.0;
        y[0] = -r[0];
        for (int k = 1; k < N; k++) {
            beta = (1 - alpha * alpha) * beta;
            double sum = 0.0;
            for (int i = 0; i < k; i++) sum += r[k - i - 1] * y[i];
            alpha = -(r[k] + sum) / beta;
            for (int i = 0; i < k; i++) z[i] = y[i] + alpha * y[k - i - 1];
            for (int i = 0; i < k; i++) y[i] = z[i];
            y[k] = alpha;
        }
        total += y[N - 1] + y[t % N];
    }
    printf("durbin %.6f\n", total);
    return 0;
}
