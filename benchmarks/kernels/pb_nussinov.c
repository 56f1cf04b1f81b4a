/* PolyBench/C 4.2.1 "nussinov" (RNA folding by dynamic programming: a triangular nest whose
 * innermost loop runs from i + 1 to j, with maxima and data-dependent branches), after Pouchet
 * et al.'s PolyBench suite (OSU license); re-written here, sized to run ~0.3 s on wasmtime. */
#include <stdio.h>
#include <stdlib.h>

#define N 300

static int seq[N], table[N][N];

static int max_score(int a, int b) { return a >= b ? a : b; }
static int match(int b1, int b2) { return b1 + b2 == 3 ? 1 : 0; }

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 12;
    long sum = 0;
    for (int t = 0; t < reps; t++) {
        for (int i = 0; i < N; i++) seq[i] = (i + 1 + t) % 4;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) table[i][j] = 0;
        for (int i = N - 1; i >= 0; i--)
            for (int j = i + 1; j < N; j++) {
                if (j - 1 >= 0) table[i][j] = max_score(table[i][j], table[i][j - 1]);
                if (i + 1 < N) table[i][j] = max_score(table[i][j], table[i + 1][j]);
                if (j - 1 >= 0 && i + 1 < N) {
                    if (i < j - 1)
                        table[i][j] = max_score(table[i][j], table[i + 1][j - 1] + match(seq[i], seq[j]));
                    else
                        table[i][j] = max_score(table[i][j], table[i + 1][j - 1]);
                }
                for (int k = i + 1; k < j; k++) table[i][j] = max_score(table[i][j], table[i][k] + table[k + 1][j]);
            }
        sum += table[0][N - 1] + table[t % N][N - 1];
    }
    printf("nussinov %ld\n", sum);
    return 0;
}
