/* pthreads (issue 20): THREADS threads (argv[1], default 2) each run ITERATIONS (argv[2], default
 * 1,000,000) rounds of integer mixing on data of their own, with no sharing until the joins:
 * work that runs in parallel when the engine runs threads in parallel
 * (benchmarks/threads_parallel.py times it). Prints one line that depends only on the arguments. */
#include <stdio.h>
#include <stdlib.h>
#include "wasmig_pthread.h"

#define MAX_THREADS 16

static long iterations = 1000000;

static void *mix(void *arg) {
    uint64_t x = (uint64_t)(intptr_t)arg * 0x9E3779B97F4A7C15ull + 1;
    for (long i = 0; i < iterations; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x += (uint64_t)i;
    }
    return (void *)(intptr_t)(uint32_t)(x ^ (x >> 32));
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (argc > 2) iterations = atol(argv[2]);
    if (threads < 1 || threads > MAX_THREADS) { printf("threads: 1..%d\n", MAX_THREADS); return 2; }
    pthread_t t[MAX_THREADS];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, mix, (void *)(intptr_t)(i + 1));
    uint32_t combined = 0;
    for (int i = 0; i < threads; i++) {
        void *r;
        pthread_join(t[i], &r);
        combined = combined * 31u + (uint32_t)(intptr_t)r;
    }
    printf("threads %d iterations %ld result %u\n", threads, iterations, combined);
    return 0;
}
