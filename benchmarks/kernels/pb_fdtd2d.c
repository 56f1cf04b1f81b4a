/* PolyBench/C 4.2.1 "fdtd-2d" (2-D finite-difference time-domain: three stencil sweeps per time
 * step), after Pouchet et al.'s PolyBench suite (OSU license); re-written here, sized to run
 * ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define NX 200
#define NY 240

static double ex[NX][NY], ey[NX][NY], hz[NX][NY];

int main(int argc, char **argv) {
    int tmax = argc > 1 ? atoi(argv[1]) : 900;
    for (int i = 0; i < NX; i++)
        for (int j = 0; j < NY; j++) {
            ex[i][j] = ((double)i * (j + 1)) / NX;
            ey[i][j] = ((double)i * (j + 2)) / NY;
            hz[i][j] = ((double)i * (j + 3)) / NX;
        }
    for (int t = 0; t < tmax; t++) {
        for (int j = 0; j < NY; j++) ey[0][j] = (double)t;
        for (int i = 1; i < NX; i++)
            for (int j = 0; j < NY; j++) ey[i][j] = ey[i][j] - 0.5 * (hz[i][j] - hz[i - 1][j]);
        for (int i = 0; i < NX; i++)
            for (int j = 1; j < NY; j++) ex[i][j] = ex[i][j] - 0.5 * (hz[i][j] - hz[i][j - 1]);
        for (int i = 0; i < NX - 1; i++)
            for (int j = 0; j < NY - 1; j++)
                hz[i][j] = hz[i][j] - 0.7 * (ex[i][j + 1] - ex[i][j] + ey[i + 1][j] - ey[i][j]);
    }
    double sum = 0.0;
    for (int i = 0; i < NX; i++) sum += hz[i][(i * 3) % NY] + ex[i][i % NY];
    printf("fdtd-2d %.6f\n", sum);
    return 0;
}
