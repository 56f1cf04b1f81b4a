/* Tries to get out of the preopened directory argv[1] in every way a WASI program can ask for:
 * "..", absolute paths, ".." hidden inside a longer path, symlinks (made by the guest, and
 * made by the host beforehand, in case the engine refuses to create them) whose targets leave
 * the sandbox, hard links and renames across the boundary, directory listings of the parent.
 * For each attempt it prints the name, the return value and errno -- never the content of
 * anything it managed to read outside, only its length, so a test can assert the secret
 * never reaches the output. A few "control" attempts stay inside (a/../inside.txt, a symlink
 * to ../inside.txt from a subdirectory) and must succeed: an engine that refuses everything
 * is not a correct sandbox either.
 *
 * Expected tree, made by the test: <root>/inside.txt, <root>/a/b/, and host-made symlinks
 * host_abs -> /etc, host_up -> .., host_esc -> ../outside/created_via_host_link,
 * host_secret -> ../outside/secret.txt; the test puts outside/ next to the preopen. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>

static const char *root;
static int rootfd;

static const char *P(const char *rel) {
    static char bufs[4][512];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, sizeof bufs[0], "%s/%s", root, rel);
    return b;
}

static const char *ename(int e) {
    switch (e) {
    case 0: return "OK";
    case EACCES: return "EACCES";
    case EBADF: return "EBADF";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EISDIR: return "EISDIR";
    case ELOOP: return "ELOOP";
    case ENOENT: return "ENOENT";
    case ENOTDIR: return "ENOTDIR";
    case ENOTEMPTY: return "ENOTEMPTY";
    case EPERM: return "EPERM";
    case ENOTCAPABLE: return "ENOTCAPABLE";
    case ENOTSUP: return "ENOTSUP";
    case EXDEV: return "EXDEV";
    default: return "E?";
    }
}

static void result(const char *name, long ret, int err) {
    printf("%-44s ret=%ld errno=%s(%d)\n", name, ret, ename(ret < 0 ? err : 0), ret < 0 ? err : 0);
}

/* Opens, and on success reads: prints only how many bytes came back (content only for a
 * control file inside, where printing it proves the right file was opened). */
static void try_open(const char *name, int fd, int show_content) {
    int err = errno;
    result(name, fd < 0 ? -1 : 0, err);
    if (fd >= 0) {
        char buf[256];
        ssize_t n = read(fd, buf, sizeof buf);
        if (show_content && n > 0) printf("  read %zd bytes: %.*s", n, (int)n, buf);
        else printf("  read %zd bytes\n", n);
        close(fd);
    }
}

/* path_open imported directly, so a path can carry bytes a C string cannot (an embedded NUL)
 * and a length that does not come from strlen. */
__attribute__((import_module("wasi_snapshot_preview1"), import_name("path_open"))) int32_t
raw_path_open(int32_t fd, int32_t dirflags, int32_t path, int32_t path_len, int32_t oflags, int64_t rights_base,
              int64_t rights_inheriting, int32_t fdflags, int32_t retptr);

static void raw_open(const char *name, const char *path, size_t len, int32_t oflags) {
    int32_t fd = -1;
    int32_t err = raw_path_open(rootfd, 0, (int32_t)(uintptr_t)path, (int32_t)len, oflags, 0x1fffffffLL, 0x1fffffffLL, 0,
                                (int32_t)(uintptr_t)&fd);
    printf("%-44s wasi errno=%d%s\n", name, err, err == 0 ? " (opened)" : "");
    if (err == 0) close(fd);
}

#define TRY(name, expr)        \
    do {                       \
        errno = 0;             \
        long r_ = (long)(expr); \
        result(name, r_, errno); \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: sandbox_escape DIR\n");
        return 2;
    }
    root = argv[1];
    char buf[256];
    struct stat st;

    errno = 0;
    rootfd = open(root, O_RDONLY | O_DIRECTORY);
    result("open the preopen itself", rootfd < 0 ? -1 : 0, errno);

    printf("-- plain paths\n");
    errno = 0; try_open("open ../x", open(P("../x"), O_RDONLY), 0);
    errno = 0; try_open("open ../outside/secret.txt", open(P("../outside/secret.txt"), O_RDONLY), 0);
    errno = 0; try_open("open /etc/passwd", open("/etc/passwd", O_RDONLY), 0);
    errno = 0; try_open("open /outside/secret.txt", open("/outside/secret.txt", O_RDONLY), 0);
    errno = 0; try_open("open a/../../outside/secret.txt", open(P("a/../../outside/secret.txt"), O_RDONLY), 0);
    errno = 0; try_open("open a/b/../../../outside/secret.txt", open(P("a/b/../../../outside/secret.txt"), O_RDONLY), 0);
    errno = 0; try_open("open ./../outside/secret.txt", open(P("./../outside/secret.txt"), O_RDONLY), 0);
    errno = 0; try_open("control: open a/../inside.txt", open(P("a/../inside.txt"), O_RDONLY), 1);
    errno = 0; try_open("control: open a/b/../../inside.txt", open(P("a/b/../../inside.txt"), O_RDONLY), 1);
    errno = 0; try_open("openat(dirfd, \"..\")", openat(rootfd, "..", O_RDONLY | O_DIRECTORY), 0);
    errno = 0; try_open("openat(dirfd, \"/etc/passwd\")", openat(rootfd, "/etc/passwd", O_RDONLY), 0);
    errno = 0; try_open("openat(dirfd, \"../outside/secret.txt\")", openat(rootfd, "../outside/secret.txt", O_RDONLY), 0);
    errno = 0; try_open("create ../created.txt", open(P("../created.txt"), O_CREAT | O_WRONLY, 0644), 0);
    errno = 0; try_open("truncate ../outside/secret.txt", open(P("../outside/secret.txt"), O_WRONLY | O_TRUNC), 0);

    printf("-- symlinks made by the guest\n");
    TRY("symlink /etc -> abs", symlink("/etc", P("abs")));
    errno = 0; try_open("open abs/passwd", open(P("abs/passwd"), O_RDONLY), 0);
    TRY("symlink .. -> up", symlink("..", P("up")));
    errno = 0; try_open("open up/outside/secret.txt", open(P("up/outside/secret.txt"), O_RDONLY), 0);
    errno = 0; try_open("open up/sandbox/inside.txt", open(P("up/sandbox/inside.txt"), O_RDONLY), 0);
    TRY("symlink ../outside/new -> esc", symlink("../outside/new", P("esc")));
    errno = 0; try_open("open esc O_CREAT", open(P("esc"), O_CREAT | O_WRONLY, 0644), 0);
    TRY("symlink ../../outside/secret.txt -> a/deep", symlink("../../outside/secret.txt", P("a/deep")));
    errno = 0; try_open("open a/deep", open(P("a/deep"), O_RDONLY), 0);
    TRY("control: symlink ../inside.txt -> a/ok", symlink("../inside.txt", P("a/ok")));
    errno = 0; try_open("control: open a/ok", open(P("a/ok"), O_RDONLY), 1);
    TRY("symlink loop -> loop", symlink("loop", P("loop")));
    errno = 0; try_open("open loop", open(P("loop"), O_RDONLY), 0);
    TRY("symlink at ../x (outside)", symlink("inside.txt", P("../x")));

    printf("-- symlinks made by the host\n");
    errno = 0; try_open("open host_abs/passwd", open(P("host_abs/passwd"), O_RDONLY), 0);
    errno = 0; try_open("open host_up/outside/secret.txt", open(P("host_up/outside/secret.txt"), O_RDONLY), 0);
    errno = 0; try_open("open host_secret", open(P("host_secret"), O_RDONLY), 0);
    errno = 0; try_open("open host_secret O_TRUNC", open(P("host_secret"), O_WRONLY | O_TRUNC), 0);
    errno = 0; try_open("open host_esc O_CREAT", open(P("host_esc"), O_CREAT | O_WRONLY, 0644), 0);
    TRY("stat host_secret (follows)", stat(P("host_secret"), &st));
    TRY("lstat host_secret (does not follow)", lstat(P("host_secret"), &st));
    printf("  is symlink: %d\n", S_ISLNK(st.st_mode));
    TRY("mkdir host_up/x", mkdir(P("host_up/x"), 0755));
    TRY("utimensat host_secret", utimensat(AT_FDCWD, P("host_secret"), NULL, 0));
    TRY("utimensat host_secret NOFOLLOW", utimensat(AT_FDCWD, P("host_secret"), NULL, AT_SYMLINK_NOFOLLOW));

    printf("-- readlink of escaping symlinks is allowed (it only reads the link)\n");
    errno = 0;
    ssize_t n = readlink(P("host_abs"), buf, sizeof buf);
    result("readlink host_abs", n, errno);
    if (n >= 0) printf("  target: %.*s\n", (int)n, buf);
    n = readlink(P("host_secret"), buf, sizeof buf);
    result("readlink host_secret", n, errno);
    if (n >= 0) printf("  target: %.*s\n", (int)n, buf);
    n = readlink(P("up"), buf, sizeof buf);
    result("readlink up", n, errno);
    if (n >= 0) printf("  target: %.*s\n", (int)n, buf);
    errno = 0;
    n = readlink(P("../x"), buf, sizeof buf);
    result("readlink ../x", n, errno);

    printf("-- links, renames, directories across the boundary\n");
    TRY("link inside.txt -> ../outside/f", link(P("inside.txt"), P("../outside/f")));
    TRY("link ../outside/secret.txt -> stolen", link(P("../outside/secret.txt"), P("stolen")));
    TRY("link host_secret -> stolen2", link(P("host_secret"), P("stolen2")));
    TRY("rename inside.txt -> ../x", rename(P("inside.txt"), P("../x")));
    TRY("rename inside.txt -> host_up/moved", rename(P("inside.txt"), P("host_up/moved")));
    TRY("rename ../outside/secret.txt -> stolen3", rename(P("../outside/secret.txt"), P("stolen3")));
    TRY("mkdir ../x", mkdir(P("../x"), 0755));
    TRY("mkdir /newdir", mkdir("/newdir", 0755));
    TRY("rmdir ../outside/sub", rmdir(P("../outside/sub")));
    TRY("unlink ../outside/secret.txt", unlink(P("../outside/secret.txt")));
    TRY("unlink host_up/outside/secret.txt", unlink(P("host_up/outside/secret.txt")));
    TRY("stat ../outside/secret.txt", stat(P("../outside/secret.txt"), &st));
    TRY("stat ..", stat(P(".."), &st));
    TRY("utimensat ../outside/secret.txt", utimensat(AT_FDCWD, P("../outside/secret.txt"), NULL, 0));
    TRY("truncate ../outside/secret.txt", truncate(P("../outside/secret.txt"), 0));
    errno = 0;
    DIR *d = opendir(P(".."));
    result("opendir ..", d ? 0 : -1, errno);
    if (d) closedir(d);
    errno = 0;
    d = opendir(P("host_up"));
    result("opendir host_up", d ? 0 : -1, errno);
    if (d) closedir(d);
    errno = 0;
    d = opendir(P("up"));
    result("opendir up", d ? 0 : -1, errno);
    if (d) closedir(d);

    printf("-- raw path_open with bytes a C string cannot hold\n");
    static const char nul_path[] = "inside.txt\0/../../outside/secret.txt";
    raw_open("path with embedded NUL", nul_path, sizeof nul_path - 1, 0);
    static const char nul_create[] = "created\0evil";
    raw_open("O_CREAT path with embedded NUL", nul_create, sizeof nul_create - 1, __WASI_OFLAGS_CREAT);
    static const char bad_utf8[] = "bad\xff\xfe.txt";
    raw_open("O_CREAT path with invalid UTF-8", bad_utf8, sizeof bad_utf8 - 1, __WASI_OFLAGS_CREAT);
    raw_open("path length 0", "inside.txt", 0, 0);
    raw_open("control: raw inside.txt", "inside.txt", 10, 0);

    printf("-- chdir does not widen the sandbox\n");
    TRY("chdir root", chdir(root));
    TRY("chdir ..", chdir(".."));
    errno = 0; try_open("open outside/secret.txt after chdir", open("outside/secret.txt", O_RDONLY), 0);
    errno = 0; try_open("control: open inside.txt relative", open("inside.txt", O_RDONLY), 1);

    printf("-- the sandbox still works afterwards\n");
    errno = 0; try_open("control: open inside.txt", open(P("inside.txt"), O_RDONLY), 1);
    return 0;
}
