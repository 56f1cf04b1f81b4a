/* Bulk file I/O: writes a 10 MiB file in 64 KiB chunks with a deterministic pattern, reads it
 * back in chunks of a different size (so reads straddle write boundaries), verifies every
 * word and prints a checksum. The pattern is generated and checked a 64-bit word at a time
 * to keep the instruction count (and so the interpreter's time) dominated by the I/O path,
 * which is the thing under test: large fd_write/fd_read buffers crossing the engine. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define TOTAL (10 * 1024 * 1024)
#define READ_CHUNK (48 * 1024)
#define WORDS (CHUNK / 8)

static uint64_t chunk[WORDS];
static uint64_t rbuf[READ_CHUNK / 8];

/* Word i of the file (i counts from the start of the file). */
static inline uint64_t pattern(uint64_t i) { return (i * 0x9E3779B97F4A7C15ull) ^ (i >> 7); }

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bigio DIR\n");
        return 2;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/big.bin", argv[1]);
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) {
        printf("open for writing failed: errno=%d\n", errno);
        return 1;
    }
    uint64_t word = 0;
    for (int c = 0; c < TOTAL / CHUNK; c++) {
        for (int i = 0; i < WORDS; i++) chunk[i] = pattern(word++);
        const char *p = (const char *)chunk;
        size_t left = CHUNK;
        while (left > 0) {
            ssize_t n = write(fd, p, left);
            if (n <= 0) {
                printf("write failed at chunk %d: errno=%d\n", c, errno);
                return 1;
            }
            p += n;
            left -= (size_t)n;
        }
    }
    if (close(fd) != 0) printf("close failed: errno=%d\n", errno);

    struct stat st;
    stat(path, &st);
    printf("wrote %lld bytes in %d chunks\n", (long long)st.st_size, TOTAL / CHUNK);

    fd = open(path, O_RDONLY);
    uint64_t sum = 0, i = 0, bad = 0, total = 0;
    size_t have = 0; /* bytes in rbuf, always a multiple of 8 once a word is complete */
    for (;;) {
        ssize_t n = read(fd, (char *)rbuf + have, sizeof rbuf - have);
        if (n < 0) {
            printf("read failed: errno=%d\n", errno);
            return 1;
        }
        if (n == 0) break;
        total += (uint64_t)n;
        have += (size_t)n;
        size_t words = have / 8;
        for (size_t w = 0; w < words; w++, i++) {
            uint64_t v = rbuf[w];
            if (v != pattern(i)) bad++;
            sum = (sum ^ v) * 0x100000001B3ull;
        }
        size_t rest = have - words * 8;
        memmove(rbuf, (char *)rbuf + words * 8, rest);
        have = rest;
    }
    close(fd);
    printf("read %llu bytes, %llu words, %llu bad, leftover %zu\n", (unsigned long long)total,
           (unsigned long long)i, (unsigned long long)bad, have);
    printf("checksum %016llx\n", (unsigned long long)sum);
    return bad == 0 && total == TOTAL ? 0 : 1;
}
