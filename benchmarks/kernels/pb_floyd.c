/* PolyBench/C 4.2.1 "floyd-warshall" (all-pairs shortest paths on integer weights: a min per
 * element, a three-deep nest), after Pouchet et al.'s PolyBench suite (OSU license); re-written
 * here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 180

static int path[N][N];

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 16;
    long sum = 0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                path[i][j] = i * j % 7 + 1 + t % 3;
                if ((i + j) % 13 == 0 || (i + j) % 7 == 0 || (i + j) % 11 == 0) path[i][j] = 999;
            }
        for (int k = 0; k < N; k++)
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++)
                    path[i][j] = path[i][j] < path[i][k] + path[k][j] ? path[i][j] : path[i][k] + path[k][j];
        for (int i = 0; i < N; i++) sum += path[i][(i * 5 + t) % N];
    }
    printf("floyd-warshall %ld\n", sum);
    return 0;
}
