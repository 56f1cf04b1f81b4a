/* wasi-threads without a threads-enabled libc (issue 20): four threads spawned through
 * wasi.thread-spawn, each on a stack of its own, hand-shaking with the main thread through
 * memory.atomic.wait32/notify, then adding into a shared counter with atomic read-modify-writes.
 * Prints deterministic results; exits 0 only when every check holds. After the WASI testsuite's
 * thread_spawn-simple.c (Apache-2.0), made one file: the entry point's assembly is a global asm
 * block, the import is declared here. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int32_t __imported_wasi_thread_spawn(int32_t arg)
    __attribute__((__import_module__("wasi"), __import_name__("thread-spawn")));

/* wasi_thread_start(tid, start_arg): set the C stack pointer from start_arg->stack, then call C */
__asm__(
    "\t.globaltype __stack_pointer, i32\n"
    "\t.functype thread_start_c (i32, i32) -> ()\n"
    "\t.globl wasi_thread_start\n"
    "\t.export_name wasi_thread_start, wasi_thread_start\n"
    "\t.type wasi_thread_start,@function\n"
    "wasi_thread_start:\n"
    "\t.functype wasi_thread_start (i32, i32) -> ()\n"
    "\tlocal.get 1\n"
    "\ti32.load 0\n"
    "\tglobal.set __stack_pointer\n"
    "\tlocal.get 0\n"
    "\tlocal.get 1\n"
    "\tcall thread_start_c\n"
    "\tend_function\n");

#define THREADS 4
#define ROUNDS 1000
#define STACK (64 * 1024)
static const int64_t SECOND = 1000 * 1000 * 1000;

typedef struct {
    char *stack_top; /* offsetof == 0: read by wasi_thread_start */
    int32_t ready, go, done, tid, index;
} shared_t;

static int32_t counter;
static int64_t wide_sum;

__attribute__((used)) void thread_start_c(int32_t tid, shared_t *s) {
    s->tid = tid;
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&s->ready, 1);
    while (__atomic_load_n(&s->go, __ATOMIC_SEQ_CST) == 0)
        __builtin_wasm_memory_atomic_wait32(&s->go, 0, -1);
    for (int i = 0; i < ROUNDS; i++) {
        __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(&wide_sum, (int64_t)(s->index + 1) << 32, __ATOMIC_SEQ_CST);
    }
    __atomic_store_n(&s->done, 1, __ATOMIC_SEQ_CST);
    __builtin_wasm_memory_atomic_notify(&s->done, 1);
}

int main(void) {
    static shared_t data[THREADS];
    int32_t tids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        data[i].index = i;
        data[i].stack_top = (char *)malloc(STACK) + STACK;
        tids[i] = __imported_wasi_thread_spawn((int32_t)(intptr_t)&data[i]);
        if (tids[i] <= 0) { printf("spawn %d failed: %d\n", i, tids[i]); return 1; }
        if (__builtin_wasm_memory_atomic_wait32(&data[i].ready, 0, SECOND) == 2 && !data[i].ready) {
            printf("thread %d never became ready\n", i); return 2;
        }
    }
    for (int i = 0; i < THREADS; i++) {
        __atomic_store_n(&data[i].go, 1, __ATOMIC_SEQ_CST);
        __builtin_wasm_memory_atomic_notify(&data[i].go, 1);
    }
    for (int i = 0; i < THREADS; i++)
        while (__atomic_load_n(&data[i].done, __ATOMIC_SEQ_CST) == 0)
            __builtin_wasm_memory_atomic_wait32(&data[i].done, 0, -1);
    for (int i = 0; i < THREADS; i++)
        for (int j = 0; j < i; j++)
            if (tids[i] == tids[j] || data[i].tid != tids[i]) { printf("bad tids\n"); return 3; }
    printf("counter %d wide %lld\n", counter, (long long)wide_sum);
    return counter == THREADS * ROUNDS && wide_sum == (int64_t)ROUNDS * (1 + 2 + 3 + 4) << 32 ? 0 : 4;
}
