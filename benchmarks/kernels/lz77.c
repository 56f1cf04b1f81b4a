/* A simple greedy LZ77 compressor (hash-chain match finder) and decompressor over generated
   text; checks the round trip and prints the compressed size and a checksum. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 4096
#define MIN_MATCH 3
#define MAX_MATCH 258
#define HBITS 14

static const char *words[] = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
                              "wasm", "stack", "frame", "memory", "checkpoint", "migrate", "and", "of"};

static size_t gen(uint8_t *out, size_t n, uint32_t seed) {
    size_t len = 0;
    while (len + 16 < n) {
        seed = seed * 1664525u + 1013904223u;
        const char *w = words[(seed >> 24) & 15];
        size_t wl = strlen(w);
        memcpy(out + len, w, wl); len += wl;
        out[len++] = (seed >> 8) % 11 == 0 ? '\n' : ' ';
        if ((seed >> 12) % 23 == 0) out[len++] = (uint8_t)('0' + (seed >> 3) % 10);
    }
    return len;
}

static int32_t head[1 << HBITS], prev[WINDOW];

/* token stream: literal = 0x00 byte; match = 0x01 off_hi off_lo len_hi len_lo */
static size_t compress(const uint8_t *in, size_t n, uint8_t *out) {
    size_t o = 0, i = 0;
    for (int k = 0; k < (1 << HBITS); k++) head[k] = -1;
    while (i < n) {
        size_t best = 0, boff = 0;
        if (i + MIN_MATCH <= n) {
            uint32_t h = ((in[i] << 10) ^ (in[i + 1] << 5) ^ in[i + 2]) & ((1 << HBITS) - 1);
            int32_t c = head[h];
            int chain = 32;
            while (c >= 0 && i - (size_t)c <= WINDOW - 1 && chain-- > 0) {
                size_t l = 0, lim = n - i < MAX_MATCH ? n - i : MAX_MATCH;
                while (l < lim && in[c + l] == in[i + l]) l++;
                if (l > best) { best = l; boff = i - (size_t)c; }
                int32_t p = prev[c % WINDOW];
                if (p >= c) break;
                c = p;
            }
            prev[i % WINDOW] = head[h];
            head[h] = (int32_t)i;
        }
        if (best >= MIN_MATCH) {
            out[o++] = 1; out[o++] = (uint8_t)(boff >> 8); out[o++] = (uint8_t)boff;
            out[o++] = (uint8_t)(best >> 8); out[o++] = (uint8_t)best;
            for (size_t k = 1; k < best && i + k + MIN_MATCH <= n; k++) {
                size_t j = i + k;
                uint32_t h = ((in[j] << 10) ^ (in[j + 1] << 5) ^ in[j + 2]) & ((1 << HBITS) - 1);
                prev[j % WINDOW] = head[h];
                head[h] = (int32_t)j;
            }
            i += best;
        } else {
            out[o++] = 0; out[o++] = in[i++];
        }
    }
    return o;
}

static size_t decompress(const uint8_t *in, size_t n, uint8_t *out) {
    size_t o = 0, i = 0;
    while (i < n) {
        if (in[i] == 0) { out[o++] = in[i + 1]; i += 2; }
        else {
            size_t off = (size_t)in[i + 1] << 8 | in[i + 2], len = (size_t)in[i + 3] << 8 | in[i + 4];
            for (size_t k = 0; k < len; k++, o++) out[o] = out[o - off];
            i += 5;
        }
    }
    return o;
}

#define N (1 << 20)

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 8;
    uint8_t *text = malloc(N), *comp = malloc(2 * N + 16), *back = malloc(N);
    uint64_t check = 0;
    size_t clen = 0;
    for (int r = 0; r < reps; r++) {
        size_t n = gen(text, N, 7u + (uint32_t)r);
        clen = compress(text, n, comp);
        size_t m = decompress(comp, clen, back);
        if (m != n || memcmp(text, back, n) != 0) { printf("lz77 MISMATCH\n"); return 1; }
        for (size_t k = 0; k < clen; k += 61) check = check * 131 + comp[k];
    }
    printf("lz77 %zu %llu\n", clen, (unsigned long long)check);
    free(text); free(comp); free(back);
    return 0;
}
