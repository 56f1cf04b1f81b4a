/* Dense double-precision matrix multiply, repeated; prints a checksum of the result. */
#include <stdio.h>
#include <stdlib.h>

#define N 200

static double a[N][N], b[N][N], c[N][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            a[i][j] = (double)((i * 31 + j * 17) % 97) / 97.0;
            b[i][j] = (double)((i * 13 + j * 7) % 89) / 89.0;
        }
    double sum = 0.0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) c[i][j] = 0.0;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < N; k++) {
                double aik = a[i][k];
                for (int j = 0; j < N; j++) c[i][j] += aik * b[k][j];
            }
        for (int i = 0; i < N; i++) sum += c[i][(i * 7 + r) % N];
        a[r % N][r % N] += 0.5;
    }
    printf("matmul %.6f\n", sum);
    return 0;
}
