/* N threads (argv[1], 1..127) wait on one futex word while the main thread computes; then it
 * releases them all with one notify and joins them (issue 20 step 3: the capture-time benchmark,
 * benchmarks/threads_capture.py, stops the program while all N wait; a test restores it). */
#include <stdio.h>
#include <stdlib.h>
#include "wasmig_pthread.h"

#define MAX_WAITERS 127

static int gate, arrived, released;

static void *waiter(void *arg) {
    (void)arg;
    __atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&arrived, 1);
    while (__atomic_load_n(&gate, __ATOMIC_SEQ_CST) == 0)
        __builtin_wasm_memory_atomic_wait32(&gate, 0, -1);
    __atomic_fetch_add(&released, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 8;
    int spin = argc > 2 ? atoi(argv[2]) : 1000;
    if (n < 1 || n > MAX_WAITERS) { printf("1..%d threads\n", MAX_WAITERS); return 2; }
    static pthread_t threads[MAX_WAITERS];
    for (int i = 0; i < n; i++) {
        pthread_create(&threads[i], NULL, waiter, NULL);
        int now;
        while ((now = __atomic_load_n(&arrived, __ATOMIC_SEQ_CST)) < i + 1)
            __builtin_wasm_memory_atomic_wait32(&arrived, now, -1);
    }
    volatile unsigned sum = 0; /* all N wait (or are about to) meanwhile */
    for (int i = 0; i < spin; i++) sum += (unsigned)i * 2654435761u;
    __atomic_store_n(&gate, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&gate, WASMIG_NOTIFY_ALL);
    for (int i = 0; i < n; i++) pthread_join(threads[i], NULL);
    printf("threads %d released %d sum %u\n", n, released, sum);
    return released == n ? 0 : 1;
}
