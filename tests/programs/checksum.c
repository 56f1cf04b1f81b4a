/* Pure compute, no I/O until the end: a deterministic checksum over integer hashing, qsort,
 * a double-precision matrix multiply, recursion and calls through function pointers.
 * Sized to stay around a million wasm instructions so a pure-Python interpreter finishes in
 * seconds. The expected output is whatever a reference engine (wasmtime) prints. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t fnv1a(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

static uint64_t xorshift64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

typedef uint32_t (*mixer)(uint32_t, uint32_t);
static uint32_t mix_add(uint32_t a, uint32_t b) { return a + b * 31u; }
static uint32_t mix_xor(uint32_t a, uint32_t b) { return (a ^ b) * 2654435761u; }
static uint32_t mix_rot(uint32_t a, uint32_t b) { return ((a << 7) | (a >> 25)) ^ b; }
static uint32_t mix_div(uint32_t a, uint32_t b) { return a / (b | 1u) + a % 1000003u; }

#define N_SORT 400
#define N_MAT 12

static uint32_t arr[N_SORT];
static double ma[N_MAT][N_MAT], mb[N_MAT][N_MAT], mc[N_MAT][N_MAT];

int main(void) {
    uint32_t sum = 0;

    /* 1. integer hashing over a generated buffer */
    uint8_t buf[1024];
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < (int)sizeof buf; i++) buf[i] = (uint8_t)xorshift64(&seed);
    for (int round = 0; round < 8; round++) {
        buf[round] ^= (uint8_t)round;
        sum = sum * 33u + fnv1a(buf, sizeof buf);
    }
    printf("hash   %08x\n", sum);

    /* 2. qsort with a comparison function pointer */
    for (int i = 0; i < N_SORT; i++) arr[i] = (uint32_t)(xorshift64(&seed) >> 32);
    qsort(arr, N_SORT, sizeof arr[0], cmp_u32);
    int sorted = 1;
    for (int i = 1; i < N_SORT; i++) sorted &= arr[i - 1] <= arr[i];
    uint32_t sort_sum = fnv1a((const uint8_t *)arr, sizeof arr);
    printf("sort   %08x sorted=%d min=%u max=%u\n", sort_sum, sorted, arr[0], arr[N_SORT - 1]);
    sum ^= sort_sum;

    /* 3. matrix multiply in doubles */
    for (int i = 0; i < N_MAT; i++)
        for (int j = 0; j < N_MAT; j++) {
            ma[i][j] = (double)(i * N_MAT + j) / 7.0 - 3.25;
            mb[i][j] = (double)((i + 3) * (j + 5) % 11) * 0.5 + 1.0 / (double)(i + j + 1);
        }
    for (int i = 0; i < N_MAT; i++)
        for (int j = 0; j < N_MAT; j++) {
            double acc = 0.0;
            for (int k = 0; k < N_MAT; k++) acc += ma[i][k] * mb[k][j];
            mc[i][j] = acc;
        }
    double trace = 0.0;
    for (int i = 0; i < N_MAT; i++) trace += mc[i][i];
    uint64_t bits;
    memcpy(&bits, &trace, sizeof bits);
    printf("matrix trace=%.6f bits=%016llx\n", trace, (unsigned long long)bits);
    sum ^= (uint32_t)bits ^ (uint32_t)(bits >> 32);

    /* 4. recursion */
    int f = fib(20);
    printf("fib    %d\n", f);
    sum += (uint32_t)f;

    /* 5. calls through a table of function pointers (call_indirect) */
    mixer mixers[4] = {mix_add, mix_xor, mix_rot, mix_div};
    uint32_t m = 1;
    for (uint32_t i = 0; i < 4000; i++) m = mixers[(m ^ i) & 3](m, i);
    printf("mix    %08x\n", m);
    sum ^= m;

    /* 6. 64-bit arithmetic, signed division and shifts */
    int64_t s64 = -1234567890123ll;
    for (int i = 1; i < 200; i++) s64 = s64 / 3 * 5 + (int64_t)i * 1000003 - (s64 >> 7);
    printf("i64    %lld\n", (long long)s64);
    sum ^= (uint32_t)s64;

    printf("checksum %08x\n", sum);
    return 0;
}
