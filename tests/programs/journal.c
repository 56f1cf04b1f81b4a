/* File I/O across checkpoints: keeps a journal file open in the preopened directory argv[1]
 * for the whole run, and for ROUNDS rounds (argv[2], default 40) appends a record, re-reads the
 * journal from an earlier offset with lseek + read, rewrites one earlier record in place
 * (pwrite) and keeps a second file's offset moving (a log it only appends to). Prints a line per
 * round; the files left behind are compared too. An open fd's offset must survive every move.
 * argv[3]: milliseconds to sleep after each round (default 0), to give a migration time.
 * argv[4]: a gate, a file name in argv[1]: with it the program goes on past ROUNDS, round after
 * round, until that file exists (a test opens it once its migration is over); N rounds leave the
 * same lines and files whether or not a gate made it N. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int rounds = argc > 2 ? atoi(argv[2]) : 40;
    int sleep_ms = argc > 3 ? atoi(argv[3]) : 0;
    char path[256], gate[256] = "";
    if (argc > 4) snprintf(gate, sizeof gate, "%s/%s", argv[1], argv[4]);
    snprintf(path, sizeof path, "%s/journal.dat", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    snprintf(path, sizeof path, "%s/log.txt", argv[1]);
    int log = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0 || log < 0) return 3;
    uint32_t h = 2166136261u;
    char rec[64], back[64];
    for (int r = 0; r < rounds || (gate[0] && access(gate, F_OK) != 0); r++) {
        int n = snprintf(rec, sizeof rec, "record %04d %08x\n", r, h);
        if (write(fd, rec, (size_t)n) != n) return 4;
        off_t end = lseek(fd, 0, SEEK_CUR);
        off_t at = (off_t)(r / 2) * n;
        if (lseek(fd, at, SEEK_SET) != at || read(fd, back, (size_t)n) != n) return 5;
        for (int i = 0; i < n; i++) h = (h ^ (uint8_t)back[i]) * 16777619u;
        if (r % 5 == 4) {
            back[0] = 'R';
            if (pwrite(fd, back, 1, at) != 1) return 6;
        }
        if (lseek(fd, end, SEEK_SET) != end) return 7;
        char line[64];
        int k = snprintf(line, sizeof line, "round %d at %lld hash %08x\n", r, (long long)end, h);
        if (write(log, line, (size_t)k) != k) return 8;
        printf("round %d %08x\n", r, h);
        fflush(stdout);
        if (sleep_ms) usleep((useconds_t)sleep_ms * 1000);
    }
    close(fd);
    close(log);
    printf("done %08x\n", h);
    return 0;
}
