/* File operations inside a preopened directory (argv[1] is its guest path): create, write,
 * read, lseek (SET/CUR/END), ftruncate, pread/pwrite, O_APPEND, fsync, rename, link, symlink,
 * readlink, unlink, mkdir/rmdir, stat/lstat/fstat, futimens, and the errors a POSIX program
 * relies on (O_EXCL on an existing file, ENOENT, ENOTEMPTY, EISDIR, ...). Prints results only,
 * never timestamps other than the ones it sets itself, so the output is deterministic and can
 * be compared byte for byte with a reference engine. Leaves a known set of files behind so the
 * resulting tree can be compared too. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <wasi/api.h>

static const char *root;
static char pbuf[3][512];

/* Three rotating buffers so one call can take up to three joined paths. */
static const char *P(const char *rel) {
    static int next;
    char *b = pbuf[next++ % 3];
    snprintf(b, sizeof pbuf[0], "%s/%s", root, rel);
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
    case ESPIPE: return "ESPIPE";
    case ENOTCAPABLE: return "ENOTCAPABLE";
    case ENOTSUP: return "ENOTSUP";
    case EXDEV: return "EXDEV";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case EBUSY: return "EBUSY";
    default: return "E?";
    }
}

/* Prints "label: ret=R errno=NAME(N)"; errno only means something when ret < 0. */
static long report(const char *label, long ret) {
    int e = ret < 0 ? errno : 0;
    printf("%-30s ret=%ld errno=%s(%d)\n", label, ret, ename(e), e);
    return ret;
}

/* The same line for a raw WASI call, which returns its errno instead of setting errno. */
static void wasi_report(const char *label, int err) {
    errno = err;
    report(label, err ? -1 : 0);
}

static const char *ftype(mode_t m) {
    if (S_ISREG(m)) return "file";
    if (S_ISDIR(m)) return "dir";
    if (S_ISLNK(m)) return "symlink";
    if (S_ISCHR(m)) return "chardev";
    if (S_ISBLK(m)) return "blockdev";
    if (S_ISFIFO(m)) return "fifo";
    if (S_ISSOCK(m)) return "socket";
    return "unknown";
}

static void show_stat(const char *label, const char *rel, int follow) {
    struct stat st;
    errno = 0;
    int r = follow ? stat(P(rel), &st) : lstat(P(rel), &st);
    if (r < 0) {
        printf("%-30s %s -> errno=%s(%d)\n", label, rel, ename(errno), errno);
        return;
    }
    if (S_ISDIR(st.st_mode))  /* directory sizes and link counts depend on the host filesystem */
        printf("%-30s %s -> %s\n", label, rel, ftype(st.st_mode));
    else
        printf("%-30s %s -> %s size=%lld nlink=%llu\n", label, rel, ftype(st.st_mode), (long long)st.st_size,
               (unsigned long long)st.st_nlink);
}

static void show_file(const char *rel) {
    char buf[256];
    int fd = open(P(rel), O_RDONLY);
    if (fd < 0) {
        printf("content %s: open failed errno=%s\n", rel, ename(errno));
        return;
    }
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    printf("content %s (%zd bytes): \"", rel, n);
    for (ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c >= 32 && c < 127 && c != '"' && c != '\\') putchar(c);
        else printf("\\x%02x", c);
    }
    printf("\"\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fileops DIR\n");
        return 2;
    }
    root = argv[1];
    char buf[128];
    ssize_t n;

    /* --- create, write, read back, seek in all three modes --- */
    int fd = report("open a.txt O_CREAT|O_WRONLY", open(P("a.txt"), O_CREAT | O_WRONLY | O_TRUNC, 0644));
    report("write hello", write(fd, "hello, world\n", 13));
    report("write more", write(fd, "second line\n", 12));
    report("read on O_WRONLY fd", read(fd, buf, 4));
    report("close", close(fd));
    report("close again", close(fd));

    fd = report("open a.txt O_RDWR", open(P("a.txt"), O_RDWR));
    n = report("read 5", read(fd, buf, 5));
    printf("  got \"%.*s\"\n", (int)n, buf);
    report("lseek SET 7", lseek(fd, 7, SEEK_SET));
    n = report("read 5", read(fd, buf, 5));
    printf("  got \"%.*s\"\n", (int)n, buf);
    report("lseek CUR -3", lseek(fd, -3, SEEK_CUR));
    n = report("read 3", read(fd, buf, 3));
    printf("  got \"%.*s\"\n", (int)n, buf);
    report("lseek CUR 0 (tell)", lseek(fd, 0, SEEK_CUR));
    report("lseek END 0", lseek(fd, 0, SEEK_END));
    report("lseek END -5", lseek(fd, -5, SEEK_END));
    n = report("read rest", read(fd, buf, sizeof buf));
    printf("  got \"%.*s\"\n", (int)n - 1, buf);
    report("read at EOF", read(fd, buf, sizeof buf));
    report("lseek SET -1", lseek(fd, -1, SEEK_SET));
    report("lseek END 0 again", lseek(fd, 0, SEEK_END));
    report("write at end", write(fd, "third\n", 6));

    /* --- pread/pwrite do not move the file offset --- */
    report("pwrite at 0", pwrite(fd, "HELLO", 5, 0));
    n = report("pread 6 at 7", pread(fd, buf, 6, 7));
    printf("  got \"%.*s\"\n", (int)n, buf);
    report("offset unchanged", lseek(fd, 0, SEEK_CUR));
    report("pread past EOF", pread(fd, buf, 10, 1000));

    /* --- fsync, ftruncate (shrink, then grow with zeros), fstat --- */
    report("fsync", fsync(fd));
    report("fdatasync", fdatasync(fd));
    struct stat st;
    report("fstat", fstat(fd, &st));
    printf("  type=%s size=%lld\n", ftype(st.st_mode), (long long)st.st_size);
    report("ftruncate 12", ftruncate(fd, 12));
    report("fstat", fstat(fd, &st));
    printf("  type=%s size=%lld\n", ftype(st.st_mode), (long long)st.st_size);
    report("ftruncate 16", ftruncate(fd, 16));
    report("fstat", fstat(fd, &st));
    printf("  type=%s size=%lld\n", ftype(st.st_mode), (long long)st.st_size);
    report("offset after truncate", lseek(fd, 0, SEEK_CUR));
    report("close", close(fd));
    show_file("a.txt");

    /* --- writing past the end leaves a hole of zeros --- */
    fd = report("open sparse.bin", open(P("sparse.bin"), O_CREAT | O_RDWR | O_EXCL, 0644));
    report("lseek SET 20", lseek(fd, 20, SEEK_SET));
    report("write tail", write(fd, "tail", 4));
    report("pwrite at 3", pwrite(fd, "mid", 3, 3));
    report("close", close(fd));
    show_file("sparse.bin");

    /* --- O_APPEND: every write goes to the end, whatever the offset --- */
    fd = report("open log.txt O_CREAT", open(P("log.txt"), O_CREAT | O_WRONLY, 0644));
    report("write", write(fd, "one\n", 4));
    close(fd);
    fd = report("open log.txt O_APPEND", open(P("log.txt"), O_WRONLY | O_APPEND));
    int fl = fcntl(fd, F_GETFL);
    printf("  F_GETFL has O_APPEND=%d accmode_is_wronly=%d\n", (fl & O_APPEND) != 0, (fl & O_ACCMODE) == O_WRONLY);
    report("write", write(fd, "two\n", 4));
    report("lseek SET 0", lseek(fd, 0, SEEK_SET));
    report("write", write(fd, "three\n", 6));
    report("close", close(fd));
    fd = open(P("log.txt"), O_RDWR | O_APPEND);
    report("pwrite on O_APPEND at 0", pwrite(fd, "X", 1, 0));
    report("fcntl clear O_APPEND", fcntl(fd, F_SETFL, 0));
    fl = fcntl(fd, F_GETFL);
    printf("  F_GETFL has O_APPEND=%d\n", (fl & O_APPEND) != 0);
    report("lseek SET 0", lseek(fd, 0, SEEK_SET));
    report("write", write(fd, "O", 1));
    close(fd);
    show_file("log.txt");

    /* --- O_EXCL, O_TRUNC, missing files --- */
    report("O_CREAT|O_EXCL existing", open(P("log.txt"), O_CREAT | O_EXCL | O_WRONLY, 0644));
    report("open missing", open(P("missing.txt"), O_RDONLY));
    report("open missing/child", open(P("missing/child.txt"), O_CREAT | O_WRONLY, 0644));
    report("open file/child", open(P("log.txt/child"), O_RDONLY));
    fd = report("open trunc.txt", open(P("trunc.txt"), O_CREAT | O_WRONLY, 0644));
    write(fd, "this will be truncated\n", 23);
    close(fd);
    fd = report("open trunc.txt O_TRUNC", open(P("trunc.txt"), O_WRONLY | O_TRUNC));
    write(fd, "short\n", 6);
    close(fd);
    show_file("trunc.txt");

    /* --- directories --- */
    report("mkdir sub", mkdir(P("sub"), 0755));
    report("mkdir sub again", mkdir(P("sub"), 0755));
    report("mkdir missing/x", mkdir(P("missing/x"), 0755));
    show_stat("stat sub", "sub", 1);
    fd = report("open dir O_RDONLY", open(P("sub"), O_RDONLY));
    report("read from dir fd", read(fd, buf, sizeof buf));
    report("write to dir fd", write(fd, "x", 1));
    if (fd >= 0) close(fd);
    report("open dir O_WRONLY", open(P("sub"), O_WRONLY));
    report("open dir O_RDWR", open(P("sub"), O_RDWR));
    report("open file O_DIRECTORY", open(P("log.txt"), O_RDONLY | O_DIRECTORY));
    fd = report("create sub/inner.txt", open(P("sub/inner.txt"), O_CREAT | O_WRONLY, 0644));
    write(fd, "inner\n", 6);
    close(fd);
    report("rmdir non-empty", rmdir(P("sub")));
    report("rmdir on a file", rmdir(P("log.txt")));
    report("unlink a dir", unlink(P("sub")));
    report("mkdir gone", mkdir(P("gone"), 0755));
    report("rmdir gone", rmdir(P("gone")));
    report("rmdir gone again", rmdir(P("gone")));
    show_stat("stat gone", "gone", 1);

    /* --- rename, link, symlink, readlink, unlink --- */
    report("rename a.txt -> b.txt", rename(P("a.txt"), P("b.txt")));
    show_stat("stat a.txt", "a.txt", 1);
    show_stat("stat b.txt", "b.txt", 1);
    report("rename missing", rename(P("a.txt"), P("c.txt")));
    report("rename over existing", rename(P("trunc.txt"), P("log2.txt")));
    fd = open(P("victim.txt"), O_CREAT | O_WRONLY, 0644);
    write(fd, "victim\n", 7);
    close(fd);
    report("rename replaces file", rename(P("log2.txt"), P("victim.txt")));
    show_file("victim.txt");
    report("rename file over dir", rename(P("victim.txt"), P("sub")));
    report("rename dir", rename(P("sub"), P("sub2")));
    show_stat("stat sub2/inner.txt", "sub2/inner.txt", 1);
    report("link b.txt -> hard.txt", link(P("b.txt"), P("hard.txt")));
    show_stat("stat hard.txt", "hard.txt", 1);
    report("link onto existing", link(P("b.txt"), P("log.txt")));
    report("symlink -> b.txt", symlink("b.txt", P("soft.txt")));
    report("symlink -> sub2", symlink("sub2", P("softdir")));
    report("symlink dangling", symlink("nowhere.txt", P("dangling")));
    report("symlink existing", symlink("b.txt", P("log.txt")));
    show_stat("lstat soft.txt", "soft.txt", 0);
    show_stat("stat soft.txt", "soft.txt", 1);
    show_stat("stat softdir/inner.txt", "softdir/inner.txt", 1);
    show_stat("lstat dangling", "dangling", 0);
    show_stat("stat dangling", "dangling", 1);
    n = readlink(P("soft.txt"), buf, sizeof buf);
    report("readlink soft.txt", n);
    printf("  target \"%.*s\"\n", (int)(n > 0 ? n : 0), buf);
    n = readlink(P("soft.txt"), buf, 3);
    report("readlink short buffer", n);
    printf("  target \"%.*s\"\n", (int)(n > 0 ? n : 0), buf);
    report("readlink on a file", readlink(P("b.txt"), buf, sizeof buf));
    report("open via symlink O_NOFOLLOW", open(P("soft.txt"), O_RDONLY | O_NOFOLLOW));
    show_file("soft.txt");
    report("unlink hard.txt", unlink(P("hard.txt")));
    show_stat("stat b.txt", "b.txt", 1);
    report("unlink missing", unlink(P("hard.txt")));
    report("unlink symlink dangling", unlink(P("dangling")));

    /* --- timestamps this program sets itself are deterministic --- */
    fd = open(P("b.txt"), O_RDWR);
    struct timespec ts[2] = {{1000000000, 0}, {1234567890, 500}};
    report("futimens", futimens(fd, ts));
    fstat(fd, &st);
    printf("  atime=%lld mtime=%lld.%09ld\n", (long long)st.st_atim.tv_sec, (long long)st.st_mtim.tv_sec,
           st.st_mtim.tv_nsec);
    close(fd);
    struct timespec ts2[2] = {{1100000000, 0}, {1500000000, 0}};
    report("utimensat", utimensat(AT_FDCWD, P("b.txt"), ts2, 0));
    stat(P("b.txt"), &st);
    printf("  atime=%lld mtime=%lld\n", (long long)st.st_atim.tv_sec, (long long)st.st_mtim.tv_sec);
    struct timespec ts3[2] = {{0, UTIME_OMIT}, {1600000000, 0}};
    report("futimens omit atime", futimens(fd = open(P("b.txt"), O_RDONLY), ts3));
    fstat(fd, &st);
    close(fd);
    printf("  atime=%lld mtime=%lld\n", (long long)st.st_atim.tv_sec, (long long)st.st_mtim.tv_sec);
    struct timespec ts4[2] = {{0, UTIME_OMIT}, {1700000000, 0}};
    report("utimensat omit atime", utimensat(AT_FDCWD, P("b.txt"), ts4, 0));
    lstat(P("b.txt"), &st);
    printf("  atime=%lld mtime=%lld\n", (long long)st.st_atim.tv_sec, (long long)st.st_mtim.tv_sec);

    /* --- edge cases: trailing slashes, empty names, wrong access modes, odd renames --- */
    report("open \"\"", open(P(""), O_RDONLY) >= 0 ? 0 : -1);
    report("open empty path", open("", O_RDONLY));
    report("open b.txt/ (trailing slash)", open(P("b.txt/"), O_RDONLY));
    fd = open(P("sub2/"), O_RDONLY);
    report("open sub2/ (trailing slash)", fd >= 0 ? 0 : -1);
    if (fd >= 0) {
        report("fstat dir fd", fstat(fd, &st));
        printf("  type=%s\n", ftype(st.st_mode));
        report("lseek on dir fd", lseek(fd, 0, SEEK_CUR) >= 0 ? 0 : -1);
        close(fd);
    }
    report("mkdir newdir/ (trailing slash)", mkdir(P("newdir/"), 0755));
    report("rmdir newdir/", rmdir(P("newdir/")));
    report("unlink b.txt/ (trailing slash)", unlink(P("b.txt/")));
    report("O_CREAT|O_DIRECTORY new", open(P("cd_new"), O_CREAT | O_DIRECTORY | O_RDONLY, 0644));
    report("access b.txt F_OK", access(P("b.txt"), F_OK));
    report("access missing F_OK", access(P("nope"), F_OK));
    report("access b.txt R_OK|W_OK", access(P("b.txt"), R_OK | W_OK));
    fd = open(P("b.txt"), O_RDONLY);
    report("write on O_RDONLY fd", write(fd, "x", 1));
    report("ftruncate on O_RDONLY fd", ftruncate(fd, 0));
    report("read 0 bytes", read(fd, buf, 0));
    close(fd);
    fd = open(P("b.txt"), O_WRONLY);
    report("write 0 bytes", write(fd, buf, 0));
    close(fd);
    report("truncate by path", truncate(P("victim.txt"), 3));
    show_stat("stat victim.txt", "victim.txt", 1);
    mkdir(P("d1"), 0755);
    mkdir(P("d1/inner"), 0755);
    mkdir(P("d2"), 0755);
    fd = open(P("d2/f"), O_CREAT | O_WRONLY, 0644);
    close(fd);
    report("rename dir into own subdir", rename(P("d1"), P("d1/inner/x")));
    report("rename dir over non-empty dir", rename(P("d1"), P("d2")));
    report("rename dir over file", rename(P("d1"), P("b.txt")));
    report("rename dir over empty dir", rename(P("d1/inner"), P("d1/empty_target")) == 0 ? 0 : -1);
    mkdir(P("d3"), 0755);
    report("rename dir onto empty dir", rename(P("d1/empty_target"), P("d3")));
    show_stat("stat d3", "d3", 1);
    report("rename to itself", rename(P("b.txt"), P("b.txt")));
    report("unlink d2/f", unlink(P("d2/f")));
    report("rmdir d2", rmdir(P("d2")));
    report("rmdir d1", rmdir(P("d1")));
    char longname[300];
    memset(longname, 'n', 299);
    longname[299] = 0;
    report("open name of 299 bytes", open(P(longname), O_CREAT | O_WRONLY, 0644));
    report("rmdir .", rmdir(P(".")));
    report("mkdir root itself", mkdir(root, 0755));

    /* --- fd-level calls: fdstat, advise, allocate, renumber --- */
    fd = open(P("b.txt"), O_RDWR | O_APPEND);
    __wasi_fdstat_t fds;
    wasi_report("fd_fdstat_get", __wasi_fd_fdstat_get(fd, &fds));
    printf("  filetype=%d flags=%d\n", fds.fs_filetype, fds.fs_flags);
    wasi_report("posix_fadvise SEQUENTIAL", posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL));
    wasi_report("fd_allocate", __wasi_fd_allocate(fd, 0, 4));
    int fd2 = open(P("log.txt"), O_RDONLY);
    wasi_report("fd_renumber onto open fd", __wasi_fd_renumber(fd2, fd));
    n = read(fd, buf, 3);
    printf("  renumbered fd reads \"%.*s\"\n", (int)(n > 0 ? n : 0), buf);
    report("old fd closed after renumber", close(fd2));
    wasi_report("fd_renumber from bad fd", __wasi_fd_renumber(77, fd));
    close(fd);
    wasi_report("fd_fdstat_get bad fd", __wasi_fd_fdstat_get(77, &fds));

    /* --- files left behind: b.txt log.txt sparse.bin victim.txt sub2/inner.txt soft.txt softdir d3 --- */
    report("unlink log.txt/x", unlink(P("log.txt/x")));
    printf("done\n");
    return 0;
}
