/* pthreads (issue 20 step 5): producers and consumers over a bounded FIFO queue guarded by a
 * mutex and two condition variables (not full, not empty). Deterministic output: how many items
 * were consumed, their sum, and whether every consumer saw each producer's items in the order
 * they were produced (a FIFO queue guarantees it, whatever the interleaving). */
#include <stdio.h>
#include "wasmig_pthread.h"

#define PRODUCERS 2
#define CONSUMERS 3
#define ITEMS 600 /* per producer */
#define CAPACITY 4
#define STOP (-1)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER, not_empty = PTHREAD_COND_INITIALIZER;
static int queue[CAPACITY], head, count;

static void put(int item) {
    pthread_mutex_lock(&lock);
    while (count == CAPACITY) pthread_cond_wait(&not_full, &lock);
    queue[(head + count++) % CAPACITY] = item;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&lock);
}

static int take(void) {
    pthread_mutex_lock(&lock);
    while (count == 0) pthread_cond_wait(&not_empty, &lock);
    int item = queue[head];
    head = (head + 1) % CAPACITY;
    count--;
    pthread_cond_signal(&not_full);
    pthread_mutex_unlock(&lock);
    return item;
}

static void *produce(void *arg) {
    int p = (int)(intptr_t)arg;
    for (int i = 0; i < ITEMS; i++) put(p * 100000 + i);
    return NULL;
}

typedef struct { long sum; int taken; int in_order; } tally_t;

static void *consume(void *arg) {
    tally_t *t = arg;
    int last[PRODUCERS];
    for (int p = 0; p < PRODUCERS; p++) last[p] = -1;
    t->in_order = 1;
    for (;;) {
        int item = take();
        if (item == STOP) return NULL;
        int p = item / 100000, i = item % 100000;
        if (i <= last[p]) t->in_order = 0;
        last[p] = i;
        t->sum += item;
        t->taken++;
    }
}

int main(void) {
    pthread_t producers[PRODUCERS], consumers[CONSUMERS];
    static tally_t tallies[CONSUMERS];
    for (int c = 0; c < CONSUMERS; c++) pthread_create(&consumers[c], NULL, consume, &tallies[c]);
    for (int p = 0; p < PRODUCERS; p++) pthread_create(&producers[p], NULL, produce, (void *)(intptr_t)p);
    for (int p = 0; p < PRODUCERS; p++) pthread_join(producers[p], NULL);
    for (int c = 0; c < CONSUMERS; c++) put(STOP);
    long sum = 0;
    int taken = 0, in_order = 1;
    for (int c = 0; c < CONSUMERS; c++) {
        pthread_join(consumers[c], NULL);
        sum += tallies[c].sum;
        taken += tallies[c].taken;
        in_order &= tallies[c].in_order;
    }
    printf("consumed %d sum %ld fifo %s\n", taken, sum, in_order ? "yes" : "no");
    return taken == PRODUCERS * ITEMS && in_order ? 0 : 1;
}
