/* libc qsort (comparison through a function pointer) of pseudo-random records, repeated. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

struct rec { uint32_t key; uint32_t tie; };

static int cmp(const void *pa, const void *pb) {
    const struct rec *a = pa, *b = pb;
    if (a->key != b->key) return a->key < b->key ? -1 : 1;
    return (a->tie > b->tie) - (a->tie < b->tie);
}

#define N 300000

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 4;
    struct rec *v = malloc(N * sizeof *v);
    uint32_t x = 42;
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < N; i++) {
            x ^= x << 13; x ^= x >> 17; x ^= x << 5;
            v[i].key = x % 100000u; v[i].tie = (uint32_t)i;
        }
        qsort(v, N, sizeof *v, cmp);
        for (int i = 0; i < N; i += 997) check = check * 1000003u + v[i].key + v[i].tie;
    }
    printf("qsort %llu\n", (unsigned long long)check);
    free(v);
    return 0;
}
