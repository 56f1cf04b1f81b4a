/* Three threads wait on one futex word in turn; the main thread then wakes them one at a time with
 * memory.atomic.notify(addr, 1) and logs who woke, in order. A checkpoint taken while all three
 * wait must restore the wait queue in the same order, so the log is the same (issue 20 step 3:
 * tests/test_threads_checkpoint.py also restores it with the queue reordered, and the log follows). */
#include <stdio.h>
#include "wasmig_pthread.h"

#define WAITERS 3

static int gate, arrived, woken, next_slot;
static int order[WAITERS];

static void *waiter(void *arg) {
    int me = (int)(intptr_t)arg;
    __atomic_fetch_add(&arrived, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&arrived, 1);
    int r = __builtin_wasm_memory_atomic_wait32(&gate, 0, -1); /* 0: woken by a notify */
    order[__atomic_fetch_add(&next_slot, 1, __ATOMIC_SEQ_CST)] = me * 10 + r;
    __atomic_fetch_add(&woken, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&woken, 1);
    return NULL;
}

static void wait_until(int *word, int value) {
    int now;
    while ((now = __atomic_load_n(word, __ATOMIC_SEQ_CST)) < value)
        __builtin_wasm_memory_atomic_wait32(word, now, -1);
}

/* a function entry: a stable point right after all three wait and before the first notify */
__attribute__((noinline)) static void all_waiting(void) { __asm__ volatile(""); }

int main(void) {
    pthread_t threads[WAITERS];
    for (int i = 0; i < WAITERS; i++) {
        pthread_create(&threads[i], NULL, waiter, (void *)(intptr_t)(i + 1));
        wait_until(&arrived, i + 1);
    }
    all_waiting();
    for (int i = 0; i < WAITERS; i++) {
        __builtin_wasm_memory_atomic_notify(&gate, 1);
        wait_until(&woken, i + 1);
    }
    for (int i = 0; i < WAITERS; i++) pthread_join(threads[i], NULL);
    printf("woken in order:");
    for (int i = 0; i < WAITERS; i++) printf(" %d", order[i]);
    printf("\n");
    return 0;
}
