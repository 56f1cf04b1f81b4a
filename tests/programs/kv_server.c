/* A TCP key-value server for the migration tests, on the listening socket the engine preopened
 * as fd 3 (`--tcplisten` or `--gateway`).
 *   kv_server [CLIENTS]   (default 8): exits 0 once that many clients have come and gone.
 * Serves many clients at once with poll(). A request is a line "INCR name"; the reply is the line
 * "name N", N the counter's new value. The counters live in the program's memory, so a client
 * that sees 1, 2, 3, ... in order across migrations saw neither a lost nor a repeated request. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FD 3
#define MAX_CLIENTS 32
#define MAX_KEYS 256

struct client { int fd; char buf[512]; size_t len; };
static struct client clients[MAX_CLIENTS];
static char keys[MAX_KEYS][32];
static unsigned long values[MAX_KEYS];
static int nkeys;

static unsigned long incr(const char *name) {
    for (int i = 0; i < nkeys; i++)
        if (strcmp(keys[i], name) == 0) return ++values[i];
    if (nkeys == MAX_KEYS) return 0;
    strncpy(keys[nkeys], name, sizeof keys[0] - 1);
    values[nkeys] = 1;
    return values[nkeys++];
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, 0);
        if (k < 0 && errno == EAGAIN) {
            struct pollfd w = {.fd = fd, .events = POLLOUT};
            poll(&w, 1, 1000);
            continue;
        }
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Answers every complete line in c's buffer; -1 if the client must go. */
static int serve_lines(struct client *c) {
    char *start = c->buf, *nl;
    while ((nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
        *nl = 0;
        char reply[96];
        int n;
        if (strncmp(start, "INCR ", 5) == 0)
            n = snprintf(reply, sizeof reply, "%s %lu\n", start + 5, incr(start + 5));
        else
            n = snprintf(reply, sizeof reply, "ERR\n");
        if (send_all(c->fd, reply, (size_t)n) < 0) return -1;
        start = nl + 1;
    }
    c->len -= (size_t)(start - c->buf);
    memmove(c->buf, start, c->len);
    return c->len == sizeof c->buf ? -1 : 0;
}

int main(int argc, char **argv) {
    int wanted = argc > 1 ? atoi(argv[1]) : 8, done = 0;
    for (int i = 0; i < MAX_CLIENTS; i++) clients[i].fd = -1;
    while (done < wanted) {
        struct pollfd fds[MAX_CLIENTS + 1];
        int map[MAX_CLIENTS + 1], n = 0;
        fds[n] = (struct pollfd){.fd = LISTEN_FD, .events = POLLIN};
        map[n++] = -1;
        for (int i = 0; i < MAX_CLIENTS; i++)
            if (clients[i].fd >= 0) {
                fds[n] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
                map[n++] = i;
            }
        if (poll(fds, (nfds_t)n, -1) < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "kv_server: poll: errno=%d\n", errno);
            return 1;
        }
        for (int k = 0; k < n; k++) {
            if (!fds[k].revents) continue;
            if (map[k] < 0) {
                int fd = accept(LISTEN_FD, NULL, NULL);
                if (fd < 0) continue;
                int slot = 0;
                while (slot < MAX_CLIENTS && clients[slot].fd >= 0) slot++;
                if (slot == MAX_CLIENTS) { close(fd); continue; }
                clients[slot].fd = fd;
                clients[slot].len = 0;
                continue;
            }
            struct client *c = &clients[map[k]];
            ssize_t got = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
            if (got < 0 && errno == EAGAIN) continue;
            if (got > 0) {
                c->len += (size_t)got;
                if (serve_lines(c) == 0) continue;
            }
            shutdown(c->fd, SHUT_RDWR);
            close(c->fd);
            c->fd = -1;
            done++;
            fprintf(stderr, "kv_server: %d clients done\n", done);
        }
    }
    printf("served %d clients, %d keys\n", done, nkeys);
    return 0;
}
