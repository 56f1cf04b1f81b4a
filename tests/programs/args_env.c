/* Echoes argv and the environment: args_sizes_get/args_get and environ_sizes_get/environ_get.
 * Every string is printed with its byte length, so an engine that re-encodes (e.g. through a
 * lossy str round trip) or drops an empty argument shows up as a different line. The full
 * environment is printed in order, then a few lookups by name, including ones that must be
 * missing. Finally the preopen table (fd_prestat_get/fd_prestat_dir_name from fd 3 up), which
 * shows the guest names and the fd order the engine chose for --dir/--tcplisten. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wasi/api.h>

extern char **environ;

static void show(const char *label, const char *s) {
    printf("%s len=%zu [%s] hex=", label, strlen(s), s);
    for (const unsigned char *p = (const unsigned char *)s; *p && p - (const unsigned char *)s < 24; p++)
        printf("%02x", *p);
    printf("\n");
}

int main(int argc, char **argv) {
    char label[64];
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++) {
        snprintf(label, sizeof label, "argv[%d]", i);
        show(label, argv[i]);
    }
    printf("argv[argc] is NULL: %d\n", argv[argc] == NULL);

    int n = 0;
    for (char **e = environ; e && *e; e++, n++) {
        snprintf(label, sizeof label, "environ[%d]", n);
        show(label, *e);
    }
    printf("environ count=%d\n", n);

    const char *names[] = {"HOME", "PATH", "GREETING", "EMPTY", "WITH_EQUALS", "UNICODE", "MISSING", "greeting"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (v) {
            snprintf(label, sizeof label, "getenv(%s)", names[i]);
            show(label, v);
        } else {
            printf("getenv(%s) unset\n", names[i]);
        }
    }
    for (int fd = 3; fd < 16; fd++) {
        __wasi_prestat_t ps;
        __wasi_errno_t err = __wasi_fd_prestat_get(fd, &ps);
        if (err != 0) {
            printf("fd %d: no preopen (errno %d)\n", fd, err);
            break;
        }
        char name[256] = {0};
        size_t len = ps.u.dir.pr_name_len < sizeof name - 1 ? ps.u.dir.pr_name_len : sizeof name - 1;
        err = __wasi_fd_prestat_dir_name(fd, (uint8_t *)name, len);
        printf("fd %d: preopen dir name_len=%zu name=[%s] errno=%d\n", fd, (size_t)ps.u.dir.pr_name_len, name, err);
    }
    return argc > 1 && strcmp(argv[1], "fail") == 0 ? 9 : 0;
}
