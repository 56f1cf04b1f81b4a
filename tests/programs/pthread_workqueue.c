/* pthreads (issue 20 step 5): a work queue served by six workers. The main thread queues tasks
 * (Collatz path lengths of a range of numbers) under a mutex and signals a condition variable;
 * workers take tasks until the queue is closed and drained, store each result in the task's slot
 * and count what they did. Deterministic output: the results in task order (their sum and a
 * hash), how many tasks were done; which worker did which is the scheduler's business. */
#include <stdio.h>
#include "wasmig_pthread.h"

#define WORKERS 6
#define TASKS 240

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_ready = PTHREAD_COND_INITIALIZER, all_done = PTHREAD_COND_INITIALIZER;
static int next_task, queued, closed, finished;
static int results[TASKS];
static int done_by[WORKERS];

static int collatz(unsigned long n) {
    int steps = 0;
    while (n != 1) { n = n % 2 ? 3 * n + 1 : n / 2; steps++; }
    return steps;
}

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (next_task == queued && !closed) pthread_cond_wait(&work_ready, &lock);
        if (next_task == queued) { pthread_mutex_unlock(&lock); return NULL; } /* closed and drained */
        int task = next_task++;
        pthread_mutex_unlock(&lock);
        int r = collatz(1000 + (unsigned long)task * 7);
        pthread_mutex_lock(&lock);
        results[task] = r;
        done_by[me]++;
        if (++finished == TASKS) pthread_cond_signal(&all_done);
        pthread_mutex_unlock(&lock);
    }
}

int main(void) {
    pthread_t workers[WORKERS];
    for (int w = 0; w < WORKERS; w++) pthread_create(&workers[w], NULL, worker, (void *)(intptr_t)w);
    for (int t = 0; t < TASKS; t++) { /* queue one task at a time, waking one worker for it */
        pthread_mutex_lock(&lock);
        queued++;
        pthread_cond_signal(&work_ready);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_lock(&lock);
    while (finished < TASKS) pthread_cond_wait(&all_done, &lock);
    closed = 1;
    pthread_cond_broadcast(&work_ready);
    pthread_mutex_unlock(&lock);
    for (int w = 0; w < WORKERS; w++) pthread_join(workers[w], NULL);
    long sum = 0;
    unsigned hash = 0;
    int by_workers = 0;
    for (int t = 0; t < TASKS; t++) { sum += results[t]; hash = hash * 31u + (unsigned)results[t]; }
    for (int w = 0; w < WORKERS; w++) by_workers += done_by[w];
    int expected = 1;
    for (int t = 0; t < TASKS; t++) expected &= results[t] == collatz(1000 + (unsigned long)t * 7);
    printf("tasks %d sum %ld hash %u checked %s\n", by_workers, sum, hash, expected ? "yes" : "no");
    return by_workers == TASKS && expected ? 0 : 1;
}
