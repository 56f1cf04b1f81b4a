/* Blocks in a host call, so a checkpoint can be taken while the program waits in it:
 *   stdin_wait             prints a prompt, blocks reading one line from stdin, echoes it;
 *   stdin_wait sleep N     prints a line, sleeps N seconds (poll_oneoff), prints another;
 *   stdin_wait iwait       blocks in poll_oneoff until stdin is readable, calling the import through
 *                          a function pointer (a call_indirect straight to the host function),
 *                          then prompts and reads a line like the first form;
 *   stdin_wait file PATH   opens PATH, reads its first 11 bytes with read(2), prompts and blocks
 *                          on stdin like the first form, then reads the rest of PATH from where
 *                          it was and appends a line to it: an open file across a checkpoint;
 *   stdin_wait unlinked PATH  creates PATH, writes to it and unlinks it (an anonymous temporary
 *                          file, as tmpfile() makes), blocks on stdin, then reads the file back.
 * Everything before the blocking call is flushed, so a test can wait for it to appear. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wasi/api.h>

__attribute__((import_module("wasi_snapshot_preview1"), import_name("poll_oneoff"))) int32_t
raw_poll_oneoff(const void *in, void *out, int32_t nsubs, int32_t *nevents);
static int32_t (*volatile poll_fn)(const void *, void *, int32_t, int32_t *) = raw_poll_oneoff;

static int ask(char *line, size_t size) {
    printf("name? ");
    fflush(stdout);
    if (!fgets(line, (int)size, stdin)) {
        printf("\nno input\n");
        return 0;
    }
    line[strcspn(line, "\n")] = 0;
    printf("hello, %s (%zu bytes)\n", line, strlen(line));
    return 1;
}

int main(int argc, char **argv) {
    char line[256];
    if (argc > 2 && strcmp(argv[1], "sleep") == 0) {
        int seconds = atoi(argv[2]);
        printf("sleeping %d s\n", seconds);
        fflush(stdout);
        unsigned left = sleep((unsigned)seconds);
        printf("woke up, %u s left\n", left);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "iwait") == 0) {
        printf("waiting for stdin (indirect)\n");
        fflush(stdout);
        __wasi_subscription_t sub;
        memset(&sub, 0, sizeof sub);
        sub.userdata = 42;
        sub.u.tag = __WASI_EVENTTYPE_FD_READ;
        sub.u.u.fd_read.file_descriptor = 0;
        __wasi_event_t ev;
        int32_t n = 0;
        int32_t err = poll_fn(&sub, &ev, 1, &n);
        printf("woke up, errno %d, %d event(s), userdata %llu, type %d\n", err, n, (unsigned long long)ev.userdata,
               (int)ev.type);
        ask(line, sizeof line);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "unlinked") == 0) {
        int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || write(fd, "scratch data\n", 13) != 13 || unlink(argv[2]) != 0) {
            printf("setup failed: errno=%d\n", errno);
            return 1;
        }
        if (!ask(line, sizeof line)) return 3;
        char buf[64];
        ssize_t n = pread(fd, buf, sizeof buf, 0);
        printf("temporary file: [%.*s]\n", (int)(n > 0 ? n : 0), buf);
        return 0;
    }
    if (argc > 2 && strcmp(argv[1], "file") == 0) {
        int fd = open(argv[2], O_RDWR | O_APPEND);
        if (fd < 0) {
            printf("open %s failed: errno=%d\n", argv[2], errno);
            return 1;
        }
        char buf[512];
        ssize_t n = read(fd, buf, 11);
        printf("read %zd: [%.*s]\n", n, (int)(n > 0 ? n : 0), buf);
        if (!ask(line, sizeof line)) return 3;
        n = read(fd, buf, sizeof buf);
        printf("rest %zd: [%.*s]\n", n, (int)(n > 0 ? n : 0), buf);
        int len = snprintf(buf, sizeof buf, "appended for %s\n", line);
        printf("append: %zd\n", write(fd, buf, (size_t)len));
        close(fd);
        return 0;
    }
    if (!ask(line, sizeof line)) return 3;
    fprintf(stderr, "stdin_wait: done\n");
    return 0;
}
