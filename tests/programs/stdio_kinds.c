/* What the guest sees of its standard streams: for fds 0, 1, 2, fstat's file type, isatty(),
 * and fd_fdstat_get's raw filetype, flags and rights. Printed to stdout only when stdout is
 * writable, so the report goes to the file named by argv[1] (preopened as /out) when given, else
 * to stdout. A test compares it with wasmtime's own WASI under each kind of host stdio. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <wasi/api.h>

static const char *kind(mode_t m) {
    if (S_ISREG(m)) return "reg";
    if (S_ISDIR(m)) return "dir";
    if (S_ISCHR(m)) return "chr";
    if (S_ISBLK(m)) return "blk";
    if (S_ISFIFO(m)) return "fifo";
    if (S_ISSOCK(m)) return "sock";
    if (S_ISLNK(m)) return "lnk";
    return "unknown";
}

int main(int argc, char **argv) {
    FILE *out = stdout;
    if (argc > 1) {
        out = fopen(argv[1], "w");
        if (!out) { perror(argv[1]); return 2; }
    }
    for (int fd = 0; fd < 3; fd++) {
        struct stat st;
        const char *type = fstat(fd, &st) == 0 ? kind(st.st_mode) : "error";
        int tty = isatty(fd);
        __wasi_fdstat_t fs;
        memset(&fs, 0, sizeof fs);
        __wasi_errno_t err = __wasi_fd_fdstat_get(fd, &fs);
        fprintf(out, "fd %d: fstat %s, isatty %d, fdstat errno %d filetype %d flags %d rights %#llx %#llx\n", fd,
                type, tty, err, fs.fs_filetype, fs.fs_flags, (unsigned long long)fs.fs_rights_base,
                (unsigned long long)fs.fs_rights_inheriting);
        __wasi_filestat_t fst;
        memset(&fst, 0, sizeof fst);
        err = __wasi_fd_filestat_get(fd, &fst);
        fprintf(out, "fd %d: filestat errno %d dev %llu ino %llu filetype %d nlink %llu size %llu times %llu %llu %llu\n",
                fd, err, (unsigned long long)fst.dev, (unsigned long long)fst.ino, fst.filetype,
                (unsigned long long)fst.nlink, (unsigned long long)fst.size, (unsigned long long)fst.atim,
                (unsigned long long)fst.mtim, (unsigned long long)fst.ctim);
        __wasi_filesize_t pos = 0;
        err = __wasi_fd_seek(fd, 0, __WASI_WHENCE_CUR, &pos);
        __wasi_errno_t err2 = __wasi_fd_tell(fd, &pos);
        __wasi_errno_t err3 = __wasi_fd_fdstat_set_flags(fd, 0);
        fprintf(out, "fd %d: seek errno %d, tell errno %d, set_flags errno %d\n", fd, err, err2, err3);
    }
    if (out != stdout) fclose(out);
    return 0;
}
