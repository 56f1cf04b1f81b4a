/* A minimal pthread layer for wasm32-wasi with wasi-threads (issue 20, step 5; docs/toolchain.md).
 *
 * zig's bundled wasi-libc is built without threads (its pthread functions are single-threaded
 * stubs: pthread_create fails), and Debian's wasi-libc predates wasi-threads. This header gives a
 * program the pthread functions it needs, under their standard names and with <pthread.h>'s own
 * types, over what the host provides:
 *
 *   - threads: pthread_create allocates a control block and a stack, and calls the host's
 *     wasi.thread-spawn with the control block; the host starts wasi_thread_start(tid, block) in a
 *     new instance, which sets that instance's C stack pointer from the block (offset 0) and runs
 *     the start routine. pthread_join waits on the block's `done` word.
 *   - mutex, condition variable, barrier, reader-writer lock: futex-style, over
 *     memory.atomic.wait32 / memory.atomic.notify (__builtin_wasm_memory_atomic_wait32/notify)
 *     and the C11 atomics, which compile to the threads proposal's atomic instructions.
 *
 * Include it in exactly one translation unit (it defines functions), compile with
 * -mcpu=generic+atomics+bulk_memory and link with
 * -Wl,--import-memory,--export-memory,--shared-memory,--max-memory=N.
 *
 * Limits, stated rather than hidden:
 *   - the libc itself is not thread-safe: malloc, stdio and errno are shared without locks. The
 *     layer's own allocations go through one lock (wasmig_libc_lock/unlock, which a program may
 *     use around its own libc calls in threads); a program calls printf from one thread at a time.
 *   - no thread-local storage (thread_local / __thread), no pthread_self, cancellation, keys,
 *     detached threads, timed waits or attributes beyond the stack size;
 *   - a joined thread's control block and stack are not reused or freed: the thread may still be
 *     returning through its last instructions when the joiner wakes.
 */
#ifndef WASMIG_PTHREAD_H
#define WASMIG_PTHREAD_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int32_t __imported_wasi_thread_spawn(int32_t start_arg)
    __attribute__((__import_module__("wasi"), __import_name__("thread-spawn")));

/* wasi_thread_start(tid, block): this instance's stack pointer from block->stack_top, then C */
__asm__(
    "\t.globaltype __stack_pointer, i32\n"
    "\t.functype wasmig_thread_main (i32, i32) -> ()\n"
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
    "\tcall wasmig_thread_main\n"
    "\tend_function\n");

#define WASMIG_DEFAULT_STACK (128 * 1024)
#define WASMIG_NOTIFY_ALL 0xFFFFFFFFu
#define WASMIG_FOREVER ((int64_t)-1)

struct __pthread {
    char *stack_top; /* offset 0: read by wasi_thread_start */
    void *(*start)(void *);
    void *arg;
    void *result;
    int32_t tid;
    int32_t done; /* 0 running, 1 returned: pthread_join waits on it */
};

static inline int32_t wasmig_load(volatile int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void wasmig_wait(volatile int *p, int expected) {
    __builtin_wasm_memory_atomic_wait32((int *)p, expected, WASMIG_FOREVER);
}
static inline void wasmig_wake(volatile int *p, unsigned count) {
    __builtin_wasm_memory_atomic_notify((int *)p, count);
}

/* --- the layer's libc lock: a plain futex mutex (0 free, 1 held, 2 held with waiters) ---------- */
static int wasmig_libc_word;

static void wasmig_futex_lock(volatile int *word) {
    int c = 0;
    if (__atomic_compare_exchange_n(word, &c, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return;
    if (c != 2) c = __atomic_exchange_n(word, 2, __ATOMIC_SEQ_CST);
    while (c != 0) {
        wasmig_wait(word, 2);
        c = __atomic_exchange_n(word, 2, __ATOMIC_SEQ_CST);
    }
}

static void wasmig_futex_unlock(volatile int *word) {
    if (__atomic_fetch_sub(word, 1, __ATOMIC_SEQ_CST) != 1) {
        __atomic_store_n(word, 0, __ATOMIC_SEQ_CST);
        wasmig_wake(word, 1);
    }
}

void wasmig_libc_lock(void) { wasmig_futex_lock(&wasmig_libc_word); }
void wasmig_libc_unlock(void) { wasmig_futex_unlock(&wasmig_libc_word); }

/* --- threads -------------------------------------------------------------------------------------- */
__attribute__((used)) void wasmig_thread_main(int32_t tid, struct __pthread *self) {
    self->tid = tid;
    self->result = self->start(self->arg);
    __atomic_store_n(&self->done, 1, __ATOMIC_SEQ_CST);
    wasmig_wake(&self->done, WASMIG_NOTIFY_ALL);
}

int pthread_attr_init(pthread_attr_t *attr) {
    memset(attr, 0, sizeof *attr);
    return 0;
}
int pthread_attr_destroy(pthread_attr_t *attr) { (void)attr; return 0; }
int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size) {
    if (size < 16 * 1024) return 22; /* EINVAL */
    attr->__u.__s[0] = size;
    return 0;
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
    size_t size = attr && attr->__u.__s[0] ? attr->__u.__s[0] : WASMIG_DEFAULT_STACK;
    wasmig_libc_lock();
    struct __pthread *t = calloc(1, sizeof *t);
    char *stack = t ? malloc(size) : NULL;
    if (t && !stack) free(t);
    wasmig_libc_unlock();
    if (!stack) return 11; /* EAGAIN */
    t->stack_top = stack + (size & ~(size_t)15); /* the C stack grows down, 16-byte aligned */
    t->start = start;
    t->arg = arg;
    int32_t tid = __imported_wasi_thread_spawn((int32_t)(intptr_t)t);
    if (tid <= 0) return 11; /* EAGAIN: the host refused (too many threads) */
    *thread = t;
    return 0;
}

int pthread_join(pthread_t thread, void **result) {
    while (wasmig_load(&thread->done) == 0) wasmig_wait(&thread->done, 0);
    if (result) *result = thread->result;
    return 0;
}

/* --- mutex: word 0 of the pthread_mutex_t (0 free, 1 held, 2 held with waiters) ----------------- */
int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr) {
    (void)attr;
    memset(m, 0, sizeof *m);
    return 0;
}
int pthread_mutex_destroy(pthread_mutex_t *m) { (void)m; return 0; }
int pthread_mutex_lock(pthread_mutex_t *m) { wasmig_futex_lock(&m->__u.__vi[0]); return 0; }
int pthread_mutex_unlock(pthread_mutex_t *m) { wasmig_futex_unlock(&m->__u.__vi[0]); return 0; }
int pthread_mutex_trylock(pthread_mutex_t *m) {
    int c = 0;
    return __atomic_compare_exchange_n(&m->__u.__vi[0], &c, 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST) ? 0 : 16;
}

/* --- condition variable: a sequence word, bumped by every signal ----------------------------------- */
int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *attr) {
    (void)attr;
    memset(c, 0, sizeof *c);
    return 0;
}
int pthread_cond_destroy(pthread_cond_t *c) { (void)c; return 0; }

int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m) {
    volatile int *seq = &c->__u.__vi[0];
    int seen = wasmig_load(seq);
    pthread_mutex_unlock(m);
    wasmig_wait(seq, seen); /* returns at once if a signal came since `seen` was read */
    /* relock as "held with waiters": other threads woken with this one may be waiting for it */
    volatile int *word = &m->__u.__vi[0];
    while (__atomic_exchange_n(word, 2, __ATOMIC_SEQ_CST) != 0) wasmig_wait(word, 2);
    return 0;
}

int pthread_cond_signal(pthread_cond_t *c) {
    __atomic_fetch_add(&c->__u.__vi[0], 1, __ATOMIC_SEQ_CST);
    wasmig_wake(&c->__u.__vi[0], 1);
    return 0;
}

int pthread_cond_broadcast(pthread_cond_t *c) {
    __atomic_fetch_add(&c->__u.__vi[0], 1, __ATOMIC_SEQ_CST);
    wasmig_wake(&c->__u.__vi[0], WASMIG_NOTIFY_ALL);
    return 0;
}

/* --- barrier: [0] arrived, [1] phase, [2] count ------------------------------------------------------ */
int pthread_barrier_init(pthread_barrier_t *b, const pthread_barrierattr_t *attr, unsigned count) {
    (void)attr;
    if (count == 0) return 22; /* EINVAL */
    memset(b, 0, sizeof *b);
    b->__u.__vi[2] = (int)count;
    return 0;
}
int pthread_barrier_destroy(pthread_barrier_t *b) { (void)b; return 0; }

int pthread_barrier_wait(pthread_barrier_t *b) {
    volatile int *arrived = &b->__u.__vi[0], *phase = &b->__u.__vi[1];
    int mine = wasmig_load(phase);
    if (__atomic_add_fetch(arrived, 1, __ATOMIC_SEQ_CST) == b->__u.__vi[2]) {
        /* the last one in: reset the count before opening, so nobody reenters a full barrier */
        __atomic_store_n(arrived, 0, __ATOMIC_SEQ_CST);
        __atomic_fetch_add(phase, 1, __ATOMIC_SEQ_CST);
        wasmig_wake(phase, WASMIG_NOTIFY_ALL);
        return PTHREAD_BARRIER_SERIAL_THREAD;
    }
    while (wasmig_load(phase) == mine) wasmig_wait(phase, mine);
    return 0;
}

/* --- reader-writer lock: word 0 is the number of readers, or WRITER ------------------------------- */
#define WASMIG_RW_WRITER 0x7FFFFFFF

int pthread_rwlock_init(pthread_rwlock_t *rw, const pthread_rwlockattr_t *attr) {
    (void)attr;
    memset(rw, 0, sizeof *rw);
    return 0;
}
int pthread_rwlock_destroy(pthread_rwlock_t *rw) { (void)rw; return 0; }

int pthread_rwlock_rdlock(pthread_rwlock_t *rw) {
    volatile int *word = &rw->__u.__vi[0];
    for (;;) {
        int v = wasmig_load(word);
        if (v != WASMIG_RW_WRITER) {
            if (__atomic_compare_exchange_n(word, &v, v + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return 0;
            continue;
        }
        wasmig_wait(word, v);
    }
}

int pthread_rwlock_wrlock(pthread_rwlock_t *rw) {
    volatile int *word = &rw->__u.__vi[0];
    for (;;) {
        int v = 0;
        if (__atomic_compare_exchange_n(word, &v, WASMIG_RW_WRITER, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return 0;
        wasmig_wait(word, v); /* v: what the word held; returns at once if it changed since */
    }
}

int pthread_rwlock_unlock(pthread_rwlock_t *rw) {
    volatile int *word = &rw->__u.__vi[0];
    if (wasmig_load(word) == WASMIG_RW_WRITER) {
        __atomic_store_n(word, 0, __ATOMIC_SEQ_CST);
        wasmig_wake(word, WASMIG_NOTIFY_ALL);
    } else if (__atomic_sub_fetch(word, 1, __ATOMIC_SEQ_CST) == 0) {
        wasmig_wake(word, WASMIG_NOTIFY_ALL); /* the last reader out: writers may go */
    }
    return 0;
}

#endif /* WASMIG_PTHREAD_H */
