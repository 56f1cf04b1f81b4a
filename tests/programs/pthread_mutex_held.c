/* pthreads: the main thread holds a mutex for 300 ms after starting four workers, which block on
 * it, then lets them add into a counter under it. A stop in that window finds threads waiting on
 * a mutex whatever the machine's load (tests/test_threads_checkpoint_wasmtime.py), where
 * pthread_mutex.c's brief contention depends on how its threads are scheduled.
 * Deterministic output: the total and each worker's count. */
#include <stdio.h>
#include <time.h>
#include "wasmig_pthread.h"

#define THREADS 4
#define ROUNDS 500

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long counter;
static int per_thread[THREADS];

static void *work(void *arg) {
    int index = (int)(intptr_t)arg;
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        counter += index + 1;
        per_thread[index]++;
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

int main(void) {
    pthread_t threads[THREADS];
    pthread_mutex_lock(&lock);
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, work, (void *)(intptr_t)i) != 0) { puts("create failed"); return 1; }
    struct timespec held = {0, 300 * 1000 * 1000};
    nanosleep(&held, NULL);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    printf("counter %ld\n", counter);
    for (int i = 0; i < THREADS; i++) printf("thread %d: %d\n", i, per_thread[i]);
    return counter == (long)ROUNDS * THREADS * (THREADS + 1) / 2 ? 0 : 1;
}
