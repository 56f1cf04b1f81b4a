/* An eight-thread program to migrate while it runs (issue 20; tests/test_threads_migrate.py).
 *   threads_migrate [ROUNDS [SLEEP_MS [KIB [GATE]]]]   (defaults 20, 20, 64, none)
 * Each round the main thread sleeps SLEEP_MS (a blocking poll_oneoff a migration interrupts and
 * the target re-issues) while the eight workers wait on a condition variable; then it opens the
 * round under the mutex and broadcasts. Each worker rewrites its slice of a shared KIB-KiB buffer
 * (so pre-copy has pages to resend), takes its turn in worker order under the mutex (a second
 * condition variable) to append its checksum to the round's log, and meets the others at a
 * barrier; the barrier's serial thread tells the main thread the round is done. The main thread
 * alone prints: the round's log, in worker order, and at the end a checksum of the whole buffer.
 * Every line depends on the data only, never on the interleaving. With GATE (a path in a
 * preopened directory) it goes on past ROUNDS, round after round, until the file GATE exists
 * (as migrate_work does): a test ends it once its migration is over, however slowly a loaded
 * machine ran it; N rounds print the same lines whether or not a gate made it N. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "wasmig_pthread.h"

#define WORKERS 8

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t round_open = PTHREAD_COND_INITIALIZER, turn_changed = PTHREAD_COND_INITIALIZER,
                      round_done = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t all_written;
static int opened = -1, finished = -1, turn, quit;
static uint32_t log_of_round[WORKERS];
static uint32_t *buf;
static size_t slice;

static void *worker(void *arg) {
    int me = (int)(intptr_t)arg;
    int seen = -1;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (opened == seen && !quit) pthread_cond_wait(&round_open, &lock);
        if (quit) { pthread_mutex_unlock(&lock); return NULL; }
        int round = seen = opened;
        pthread_mutex_unlock(&lock);
        uint32_t h = 2166136261u ^ (uint32_t)(round * WORKERS + me);
        uint32_t *mine = buf + (size_t)me * slice;
        for (size_t i = 0; i < slice; i++) {
            mine[i] = mine[i] * 1103515245u + (uint32_t)round + 12345u;
            h = (h ^ mine[i]) * 16777619u;
        }
        pthread_mutex_lock(&lock);
        while (turn != me) pthread_cond_wait(&turn_changed, &lock);
        log_of_round[me] = h;
        turn++;
        pthread_cond_broadcast(&turn_changed);
        pthread_mutex_unlock(&lock);
        if (pthread_barrier_wait(&all_written) == PTHREAD_BARRIER_SERIAL_THREAD) {
            pthread_mutex_lock(&lock);
            finished = round;
            pthread_cond_signal(&round_done);
            pthread_mutex_unlock(&lock);
        }
    }
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    int sleep_ms = argc > 2 ? atoi(argv[2]) : 20;
    size_t words = (size_t)(argc > 3 ? atoi(argv[3]) : 64) * 1024 / 4;
    const char *gate = argc > 4 ? argv[4] : NULL;
    slice = words / WORKERS;
    buf = malloc(words * 4);
    if (!buf || slice == 0) return 2;
    for (size_t i = 0; i < words; i++) buf[i] = (uint32_t)i * 2654435761u;
    pthread_barrier_init(&all_written, NULL, WORKERS);
    pthread_t threads[WORKERS];
    for (int w = 0; w < WORKERS; w++) pthread_create(&threads[w], NULL, worker, (void *)(intptr_t)w);
    for (int r = 0; r < rounds || (gate && access(gate, F_OK) != 0); r++) {
        if (sleep_ms) usleep((useconds_t)sleep_ms * 1000);
        pthread_mutex_lock(&lock);
        turn = 0;
        opened = r;
        pthread_cond_broadcast(&round_open);
        while (finished != r) pthread_cond_wait(&round_done, &lock);
        printf("round %d", r);
        for (int w = 0; w < WORKERS; w++) printf(" %08x", log_of_round[w]);
        printf("\n");
        fflush(stdout);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_lock(&lock);
    quit = 1;
    pthread_cond_broadcast(&round_open);
    pthread_mutex_unlock(&lock);
    for (int w = 0; w < WORKERS; w++) pthread_join(threads[w], NULL);
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < words; i++) h = (h ^ buf[i]) * 16777619u;
    printf("done %08x\n", h);
    return 0;
}
