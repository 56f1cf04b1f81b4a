/* One thread blocks reading stdin while the main thread waits for it (issue 20 step 3): a
 * checkpoint taken meanwhile finds the reader blocked in fd_read, and a restore must re-issue that
 * read. Prints what was read and the main thread's sum. The main thread sums before it starts the
 * reader, so once the reader is blocked (what the test waits for) the main thread is in its join,
 * not still computing. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "wasmig_pthread.h"

static char line[64];

static void *reader(void *arg) {
    (void)arg;
    ssize_t n = read(0, line, sizeof line - 1);
    if (n < 0) n = 0;
    line[n] = 0;
    char *newline = strchr(line, '\n');
    if (newline) *newline = 0;
    return NULL;
}

int main(void) {
    volatile int sum = 0;
    for (int i = 0; i < 1000; i++) sum += i;
    pthread_t thread;
    pthread_create(&thread, NULL, reader, NULL);
    pthread_join(thread, NULL);
    printf("read '%s' sum %d\n", line, sum);
    return 0;
}
