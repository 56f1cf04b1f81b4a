/* A TCP echo server on a socket the engine preopened as fd 3 (`--tcplisten HOST:PORT`):
 * accepts one connection at a time, echoes every byte back until the peer shuts down its
 * side, then shuts down and closes, and exits 0 after argv[1] connections (default 1).
 * Exercises sock_accept, sock_recv, sock_send, sock_shutdown and fd_close on sockets. If the
 * engine hands out non-blocking sockets, EAGAIN is answered with poll() (poll_oneoff with an
 * fd subscription) instead of spinning. Progress goes to stderr so stdout stays empty unless
 * something goes wrong. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FD 3

static int wait_for(int fd, short events) {
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, 30000);
    if (r <= 0) fprintf(stderr, "tcp_echo: poll on fd %d returned %d errno=%d\n", fd, r, errno);
    return r;
}

/* Sends all of buf, waiting if the socket is non-blocking and full. */
static int send_all(int fd, const char *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(fd, buf + done, len - done, 0);
        if (n < 0 && errno == EAGAIN) {
            if (wait_for(fd, POLLOUT) <= 0) return -1;
            continue;
        }
        if (n <= 0) {
            fprintf(stderr, "tcp_echo: send failed: ret=%zd errno=%d\n", n, errno);
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    int wanted = argc > 1 ? atoi(argv[1]) : 1;
    for (int served = 0; served < wanted;) {
        struct sockaddr_storage addr;
        socklen_t addrlen = sizeof addr;
        int conn = accept(LISTEN_FD, (struct sockaddr *)&addr, &addrlen);
        if (conn < 0) {
            if (errno == EAGAIN) {
                if (wait_for(LISTEN_FD, POLLIN) <= 0) return 1;
                continue;
            }
            fprintf(stderr, "tcp_echo: accept failed: errno=%d\n", errno);
            printf("accept failed: errno=%d\n", errno);
            return 1;
        }
        unsigned long total = 0;
        char buf[4096];
        for (;;) {
            ssize_t n = recv(conn, buf, sizeof buf, 0);
            if (n < 0 && errno == EAGAIN) {
                if (wait_for(conn, POLLIN) <= 0) return 1;
                continue;
            }
            if (n < 0) {
                fprintf(stderr, "tcp_echo: recv failed: errno=%d\n", errno);
                return 1;
            }
            if (n == 0) break; /* the peer shut down its sending side */
            if (send_all(conn, buf, (size_t)n) < 0) return 1;
            total += (unsigned long)n;
        }
        if (shutdown(conn, SHUT_RDWR) < 0) fprintf(stderr, "tcp_echo: shutdown: errno=%d\n", errno);
        close(conn);
        served++;
        fprintf(stderr, "tcp_echo: connection %d done, %lu bytes echoed\n", served, total);
    }
    return 0;
}
