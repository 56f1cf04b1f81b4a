/* pthreads (issue 20 step 5): a reader-writer lock guards a table whose entries always sum to
 * zero. Two writers move amounts between entries (each move keeps the sum) under the write lock;
 * four readers sum the table under the read lock and count any sum that is not zero (a reader
 * that saw a half-done move). Deterministic output: the moves made, the violations (0), and the
 * table's final contents (the moves commute: additions in any order). */
#include <stdio.h>
#include "wasmig_pthread.h"

#define ENTRIES 16
#define WRITERS 2
#define READERS 4
#define MOVES 400 /* per writer */
#define READS 300 /* per reader */

static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
static volatile int table[ENTRIES];
static int moves_made, violations;

static void *writer(void *arg) {
    int w = (int)(intptr_t)arg;
    for (int i = 0; i < MOVES; i++) {
        int from = (i * 5 + w) % ENTRIES, to = (i * 3 + 7 * w + 1) % ENTRIES, amount = i % 9 + 1;
        pthread_rwlock_wrlock(&rw);
        table[from] -= amount;
        for (volatile int spin = 0; spin < 20; spin++) {} /* widen the window a broken lock would show */
        table[to] += amount;
        moves_made++;
        pthread_rwlock_unlock(&rw);
    }
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    int bad = 0;
    for (int i = 0; i < READS; i++) {
        pthread_rwlock_rdlock(&rw);
        int sum = 0;
        for (int e = 0; e < ENTRIES; e++) sum += table[e];
        if (sum != 0) bad++;
        pthread_rwlock_unlock(&rw);
    }
    __atomic_fetch_add(&violations, bad, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(void) {
    pthread_t writers[WRITERS], readers[READERS];
    for (int r = 0; r < READERS; r++) pthread_create(&readers[r], NULL, reader, NULL);
    for (int w = 0; w < WRITERS; w++) pthread_create(&writers[w], NULL, writer, (void *)(intptr_t)w);
    for (int w = 0; w < WRITERS; w++) pthread_join(writers[w], NULL);
    for (int r = 0; r < READERS; r++) pthread_join(readers[r], NULL);
    printf("moves %d violations %d table", moves_made, violations);
    for (int e = 0; e < ENTRIES; e++) printf(" %d", table[e]);
    printf("\n");
    return violations == 0 && moves_made == WRITERS * MOVES ? 0 : 1;
}
