/* PolyBench/C 4.2.1 "jacobi-1d" (a 3-point stencil, two sweeps per time step: short, simple
 * inner loops), after Pouchet et al.'s PolyBench suite (OSU license); re-written here, sized to
 * run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 2000

static double A[N], B[N];

int main(int argc, char **argv) {
    int tsteps = argc > 1 ? atoi(argv[1]) : 24000;
    for (int i = 0; i < N; i++) {
        A[i] = ((double)i + 2) / N;
        B[i] = ((double)i + 3) / N;
    }
    for (int t = 0; t < tsteps; t++) {
        for (int i = 1; i < N - 1; i++) B[i] = 0.33333 * (A[i - 1] + A[i] + A[i + 1]);
        for (int i = 1; i < N - 1; i++) A[i] = 0.33333 * (B[i - 1] + B[i] + B[i + 1]);
    }
    double sum = 0.0;
    for (int i = 0; i < N; i++) sum += A[i];
    printf("jacobi-1d %.6f\n", sum);
    return 0;
}
