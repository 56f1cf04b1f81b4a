/* pthreads (issue 20 step 5): eight threads add into one counter under a mutex, each also
 * appending its index to a log under the same mutex. Deterministic output: the total, and per
 * thread how many log entries it made (the log's order is the scheduler's; its counts are not). */
#include <stdio.h>
#include "wasmig_pthread.h"

#define THREADS 8
#define ROUNDS 2000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long counter;           /* a plain int: only the mutex keeps it right */
static unsigned char log_[THREADS * ROUNDS];
static int logged;

static void *work(void *arg) {
    int index = (int)(intptr_t)arg;
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        long seen = counter;
        counter = seen + index + 1;
        log_[logged++] = (unsigned char)index;
        pthread_mutex_unlock(&lock);
    }
    return (void *)(intptr_t)(index * 10);
}

int main(void) {
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&threads[i], NULL, work, (void *)(intptr_t)i) != 0) { puts("create failed"); return 1; }
    long returned = 0;
    for (int i = 0; i < THREADS; i++) {
        void *result;
        pthread_join(threads[i], &result);
        returned += (long)(intptr_t)result;
    }
    int per_thread[THREADS] = {0};
    for (int i = 0; i < logged; i++) per_thread[log_[i]]++;
    printf("counter %ld logged %d returned %ld\n", counter, logged, returned);
    for (int i = 0; i < THREADS; i++) printf("thread %d: %d\n", i, per_thread[i]);
    return counter == (long)ROUNDS * THREADS * (THREADS + 1) / 2 ? 0 : 1;
}
