/* Open-addressing (linear probing) hash table of u64 keys: inserts, then hits and misses. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAP (1u << 21)
#define EMPTY 0

static uint64_t keys[CAP];
static uint32_t vals[CAP];

static inline uint32_t hash(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33;
    return (uint32_t)k & (CAP - 1);
}

static void insert(uint64_t k, uint32_t v) {
    uint32_t i = hash(k);
    while (keys[i] != EMPTY && keys[i] != k) i = (i + 1) & (CAP - 1);
    keys[i] = k; vals[i] += v;
}

static int lookup(uint64_t k, uint32_t *v) {
    uint32_t i = hash(k);
    while (keys[i] != EMPTY) {
        if (keys[i] == k) { *v = vals[i]; return 1; }
        i = (i + 1) & (CAP - 1);
    }
    return 0;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 2;
    const uint32_t n = CAP / 2 + CAP / 8;
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        memset(keys, 0, sizeof keys); memset(vals, 0, sizeof vals);
        uint64_t x = 0x9e3779b97f4a7c15ULL + (uint64_t)r;
        for (uint32_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            insert((x >> 20) | 1, i);
        }
        uint32_t hits = 0, v;
        x = 0x9e3779b97f4a7c15ULL + (uint64_t)r;
        for (uint32_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            if (lookup((x >> 20) | 1, &v)) { hits++; check += v; }
            if (lookup((x >> 21) | 2, &v)) check ^= v;
        }
        check = check * 31 + hits;
    }
    printf("hashtable %llu\n", (unsigned long long)check);
    return 0;
}
