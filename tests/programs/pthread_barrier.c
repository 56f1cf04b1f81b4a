/* pthreads (issue 20 step 5): four threads step a ring of cells through phases separated by a
 * barrier; in each phase a thread computes its cell from its neighbours' values of the phase
 * before (double buffering), so the result is the same whatever the interleaving, and it is
 * wrong if any thread passes a barrier early. Exactly one thread per phase is the serial one. */
#include <stdio.h>
#include "wasmig_pthread.h"

#define THREADS 4
#define PHASES 40

static pthread_barrier_t barrier;
static unsigned cells[2][THREADS];
static int serial_count;
static unsigned history[PHASES]; /* written by the serial thread of each phase */

static void *step(void *arg) {
    int me = (int)(intptr_t)arg;
    for (int phase = 0; phase < PHASES; phase++) {
        const unsigned *before = cells[phase % 2];
        unsigned *after = cells[(phase + 1) % 2];
        after[me] = before[me] * 31u + before[(me + 1) % THREADS] * 7u + before[(me + THREADS - 1) % THREADS] + 1u;
        if (pthread_barrier_wait(&barrier) == PTHREAD_BARRIER_SERIAL_THREAD) {
            __atomic_fetch_add(&serial_count, 1, __ATOMIC_SEQ_CST);
            unsigned h = 0;
            for (int i = 0; i < THREADS; i++) h = h * 2654435761u + after[i];
            history[phase] = h;
        }
        pthread_barrier_wait(&barrier); /* nobody writes the next phase before the serial thread read this one */
    }
    return NULL;
}

int main(void) {
    pthread_t threads[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) cells[0][i] = (unsigned)i + 1;
    for (int i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, step, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    /* the same computation, one thread, to compare with */
    unsigned a[THREADS], b[THREADS];
    for (int i = 0; i < THREADS; i++) a[i] = (unsigned)i + 1;
    int same = 1;
    for (int phase = 0; phase < PHASES; phase++) {
        unsigned h = 0;
        for (int i = 0; i < THREADS; i++) b[i] = a[i] * 31u + a[(i + 1) % THREADS] * 7u + a[(i + THREADS - 1) % THREADS] + 1u;
        for (int i = 0; i < THREADS; i++) { a[i] = b[i]; h = h * 2654435761u + b[i]; }
        same &= h == history[phase];
    }
    printf("phases %d serial %d cells %u %u %u %u matches %s\n", PHASES, serial_count, cells[PHASES % 2][0],
           cells[PHASES % 2][1], cells[PHASES % 2][2], cells[PHASES % 2][3], same ? "yes" : "no");
    return same && serial_count == PHASES ? 0 : 1;
}
