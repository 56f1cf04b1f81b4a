/* Sandbox probe: prints "<case> <errno>" for every path-resolution edge case that
 * wasmig/wasi/sandbox.py must answer exactly like wasmtime (cap-std). 0 means success.
 *
 * Calls the raw WASI functions (wasi/api.h) rather than open(): wasi-libc rewrites absolute
 * paths against its preopen table before the host ever sees them, and this program is about
 * what the *host* answers. Expects its first preopen (fd 3) to be a directory laid out by
 * tests/test_wasi_sandbox.py::make_tree:
 *   file.txt, sub/, up -> .., abs -> /etc, chain1 -> chain2 -> ../outside, ok -> sub,
 *   loop1 <-> loop2, dangling -> ../outside/new.txt   (and ../outside/secret.txt on the host)
 * It creates more entries itself (guest-made symlinks, a 50-link chain), so run it on a fresh tree.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

#define ROOT 3
#define FOLLOW __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW
#define NOFOLLOW 0
#define CREAT __WASI_OFLAGS_CREAT
#define DIR __WASI_OFLAGS_DIRECTORY
#define EXCL __WASI_OFLAGS_EXCL
#define TRUNC __WASI_OFLAGS_TRUNC
#define R (__WASI_RIGHTS_FD_READ | __WASI_RIGHTS_FD_SEEK | __WASI_RIGHTS_FD_READDIR | __WASI_RIGHTS_PATH_OPEN)
#define RW (R | __WASI_RIGHTS_FD_WRITE)

/* path_open with an explicit length, so a path may contain NUL. */
__attribute__((import_module("wasi_snapshot_preview1"), import_name("path_open"))) int32_t
raw_path_open(int32_t fd, int32_t dirflags, int32_t path, int32_t path_len, int32_t oflags, int64_t rights_base,
              int64_t rights_inheriting, int32_t fdflags, int32_t retptr);

static void report(const char *name, int err) { printf("%s %d\n", name, err); }

static int open_at(int dir, const char *path, int lookup, int oflags, __wasi_rights_t rights) {
    __wasi_fd_t fd;
    int err = __wasi_path_open(dir, lookup, path, oflags, rights, rights, 0, &fd);
    if (!err) (void)__wasi_fd_close(fd);
    return err;
}

static int stat_at(int dir, const char *path, int lookup) {
    __wasi_filestat_t st;
    return __wasi_path_filestat_get(dir, lookup, path, &st);
}

static int readlink_at(int dir, const char *path) {
    uint8_t buf[256];
    __wasi_size_t n;
    return __wasi_path_readlink(dir, path, buf, sizeof buf, &n);
}

#define OPEN(name, path, lookup, oflags, rights) report(name, open_at(ROOT, path, lookup, oflags, rights))

int main(void) {
    /* Escapes through "..". */
    OPEN("open_dotdot_file", "../outside/secret.txt", FOLLOW, 0, R);
    OPEN("open_dotdot", "..", FOLLOW, DIR, R);
    OPEN("open_sub_dotdot_dotdot", "sub/../../outside/secret.txt", FOLLOW, 0, R);
    OPEN("open_dot_dotdot", "./../outside/secret.txt", FOLLOW, 0, R);
    OPEN("open_missing_dotdot_dotdot", "nope/../../outside/secret.txt", FOLLOW, 0, R);
    /* Absolute paths. */
    OPEN("open_absolute", "/etc/passwd", FOLLOW, 0, R);
    OPEN("open_absolute_root", "/", FOLLOW, DIR, R);
    /* Symlinks the host planted. */
    OPEN("open_abs_link_through", "abs/passwd", FOLLOW, 0, R);
    OPEN("open_abs_link_follow", "abs", FOLLOW, DIR, R);
    OPEN("open_abs_link_nofollow", "abs", NOFOLLOW, 0, R);
    OPEN("open_up_through", "up/outside/secret.txt", FOLLOW, 0, R);
    OPEN("open_up_follow", "up", FOLLOW, DIR, R);
    OPEN("open_up_nofollow", "up", NOFOLLOW, 0, R);
    OPEN("open_up_trailing_slash_nofollow", "up/", NOFOLLOW, 0, R);
    OPEN("open_chain_through", "chain1/secret.txt", FOLLOW, 0, R);
    OPEN("open_chain_follow", "chain1", FOLLOW, DIR, R);
    OPEN("open_ok_dotdot_dotdot", "ok/../../outside/secret.txt", FOLLOW, 0, R);
    /* Loops and the expansion limit. */
    OPEN("open_loop_follow", "loop1", FOLLOW, 0, R);
    OPEN("open_loop_nofollow", "loop1", NOFOLLOW, 0, R);
    OPEN("open_loop_through", "loop1/x", FOLLOW, 0, R);
    /* Dangling symlink pointing outside, opened with O_CREAT. */
    OPEN("open_dangling_read_follow", "dangling", FOLLOW, 0, R);
    OPEN("open_dangling_creat_follow", "dangling", FOLLOW, CREAT, RW);
    OPEN("open_dangling_creat_nofollow", "dangling", NOFOLLOW, CREAT, RW);
    OPEN("open_dangling_creat_excl_follow", "dangling", FOLLOW, CREAT | EXCL, RW);
    OPEN("open_dangling_creat_excl_nofollow", "dangling", NOFOLLOW, CREAT | EXCL, RW);
    /* Non-directories used as directories, and other plain errors. */
    OPEN("open_file_as_dir", "file.txt/x", FOLLOW, 0, R);
    OPEN("open_file_trailing_slash", "file.txt/", FOLLOW, 0, R);
    OPEN("open_file_odirectory", "file.txt", FOLLOW, DIR, R);
    OPEN("open_empty", "", FOLLOW, 0, R);
    OPEN("open_missing", "nope", FOLLOW, 0, R);
    OPEN("open_missing_through", "nope/x", FOLLOW, 0, R);
    OPEN("open_missing_dotdot", "nope/../file.txt", FOLLOW, 0, R);
    OPEN("open_creat_trailing_slash", "newdir/", FOLLOW, CREAT, RW);
    OPEN("open_creat_excl_existing", "file.txt", FOLLOW, CREAT | EXCL, RW);
    OPEN("open_creat_excl_symlink_nofollow", "ok", NOFOLLOW, CREAT | EXCL, RW);
    OPEN("open_creat_excl_dot", ".", FOLLOW, CREAT | EXCL, RW);
    OPEN("open_creat_dot", ".", FOLLOW, CREAT, RW);
    OPEN("open_dir_write", "sub", FOLLOW, 0, RW);
    OPEN("open_dir_trunc", "sub", FOLLOW, TRUNC, RW);
    OPEN("open_ok_nofollow_odirectory", "ok", NOFOLLOW, DIR, R);
    OPEN("open_ok_nofollow_trailing_slash", "ok/", NOFOLLOW, DIR, R);
    OPEN("open_file_nofollow_trailing_slash_link", "ok/../file.txt/", FOLLOW, 0, R);
    {
        __wasi_fd_t fd;
        report("open_nul", raw_path_open(ROOT, FOLLOW, (int32_t)(uintptr_t) "file.txt\0x", 10, 0, R, R, 0,
                                         (int32_t)(uintptr_t)&fd));
        report("open_nul_absolute", raw_path_open(ROOT, FOLLOW, (int32_t)(uintptr_t) "/etc\0x", 6, 0, R, R, 0,
                                                  (int32_t)(uintptr_t)&fd));
        report("open_nul_dotdot", raw_path_open(ROOT, FOLLOW, (int32_t)(uintptr_t) "../x\0", 5, 0, R, R, 0,
                                                (int32_t)(uintptr_t)&fd));
        report("open_nul_missing_dir", raw_path_open(ROOT, FOLLOW, (int32_t)(uintptr_t) "nope/x\0", 7, 0, R, R, 0,
                                                     (int32_t)(uintptr_t)&fd));
        report("open_invalid_utf8", raw_path_open(ROOT, FOLLOW, (int32_t)(uintptr_t) "fi\xffle", 5, 0, R, R, 0,
                                                  (int32_t)(uintptr_t)&fd));
    }
    {
        /* "./" repeated, then a name: how long a path may be (PATH_MAX is 4096 with the NUL). */
        static char longpath[4200];
        static const struct { const char *name; int at; const char *tail; } cases[] = {
            {"open_path_len_4104", 4096, "file.txt"},
            {"open_path_len_4095", 4087, "file.txt"},
            {"open_path_len_4096", 4088, "file.txt"},
        };
        for (unsigned c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            for (int i = 0; i < 2048; i++) memcpy(longpath + 2 * i, "./", 2);
            if (cases[c].at % 2) longpath[cases[c].at - 1] = '/';
            strcpy(longpath + cases[c].at, cases[c].tail);
            OPEN(cases[c].name, longpath, FOLLOW, 0, R);
        }
    }
    /* Legitimate paths. */
    OPEN("ok_dot_file", "./file.txt", FOLLOW, 0, R);
    OPEN("ok_sub_dotdot_file", "sub/../file.txt", FOLLOW, 0, R);
    OPEN("ok_link_dotdot_file", "ok/../file.txt", FOLLOW, 0, R);
    OPEN("ok_dot", ".", FOLLOW, DIR, R);
    OPEN("ok_sub_dotdot", "sub/..", FOLLOW, DIR, R);
    OPEN("ok_sub_dot", "sub/.", FOLLOW, DIR, R);
    OPEN("ok_double_slash", "sub//../file.txt", FOLLOW, 0, R);
    OPEN("ok_link_follow_dir", "ok", FOLLOW, DIR, R);
    OPEN("ok_link_trailing_slash", "ok/", FOLLOW, 0, R);
    OPEN("ok_creat_in_link", "ok/new.txt", FOLLOW, CREAT, RW);
    OPEN("ok_read_in_link", "ok/new.txt", FOLLOW, 0, R);
    /* Each directory fd is its own root: ".." out of sub is an escape although it stays in the preopen. */
    {
        __wasi_fd_t sub;
        int err = __wasi_path_open(ROOT, FOLLOW, "sub", DIR, R, R, 0, &sub);
        report("subfd_open", err);
        if (!err) {
            report("subfd_dotdot_file", open_at(sub, "../file.txt", FOLLOW, 0, R));
            report("subfd_dotdot", open_at(sub, "..", FOLLOW, DIR, R));
            report("subfd_dot", open_at(sub, ".", FOLLOW, DIR, R));
            report("subfd_stat_dotdot", stat_at(sub, "..", FOLLOW));
            (void)__wasi_fd_close(sub);
        }
    }
    /* Guest-created symlinks. */
    report("symlink_create_out", __wasi_path_symlink("../outside", ROOT, "gout"));
    OPEN("symlink_out_through", "gout/secret.txt", FOLLOW, 0, R);
    OPEN("symlink_out_follow", "gout", FOLLOW, DIR, R);
    report("symlink_create_abs", __wasi_path_symlink("/etc", ROOT, "gabs"));
    OPEN("symlink_abs_through", "gabs/passwd", FOLLOW, 0, R);
    report("symlink_create_in", __wasi_path_symlink("sub", ROOT, "gin"));
    OPEN("symlink_in_through", "gin/../file.txt", FOLLOW, 0, R);
    report("symlink_create_outside_dir", __wasi_path_symlink("x", ROOT, "../outside/planted"));
    report("symlink_create_through_up", __wasi_path_symlink("x", ROOT, "up/planted"));
    report("symlink_create_existing", __wasi_path_symlink("x", ROOT, "file.txt"));
    report("symlink_create_dangling_name", __wasi_path_symlink("x", ROOT, "dangling"));
    report("symlink_create_trailing_slash", __wasi_path_symlink("x", ROOT, "newlink/"));
    /* The symlink expansion limit: c00 -> c01 -> ... -> c49 -> file.txt. */
    {
        char name[8], target[16];
        for (int i = 0; i < 50; i++) {
            snprintf(name, sizeof name, "c%02d", i);
            if (i == 49)
                snprintf(target, sizeof target, "file.txt");
            else
                snprintf(target, sizeof target, "c%02d", i + 1);
            (void)__wasi_path_symlink(target, ROOT, name);
        }
        int deepest_ok = -1, first_fail_errno = 0;
        for (int links = 1; links <= 50; links++) {
            snprintf(name, sizeof name, "c%02d", 50 - links);
            int err = open_at(ROOT, name, FOLLOW, 0, R);
            if (!err)
                deepest_ok = links;
            else if (!first_fail_errno)
                first_fail_errno = err;
        }
        printf("symlink_max_links_ok %d\n", deepest_ok);
        report("symlink_too_many", first_fail_errno);
        /* The same chain used as an intermediate component (c40 .. c49 plus a dir link). */
        report("symlink_too_many_through", open_at(ROOT, "c00/x", FOLLOW, 0, R));
    }
    /* Other path operations (for preview1's callers of the resolver). */
    report("stat_up_follow", stat_at(ROOT, "up", FOLLOW));
    report("stat_up_nofollow", stat_at(ROOT, "up", NOFOLLOW));
    report("stat_abs_follow", stat_at(ROOT, "abs", FOLLOW));
    report("stat_abs_nofollow", stat_at(ROOT, "abs", NOFOLLOW));
    report("stat_dotdot", stat_at(ROOT, "..", FOLLOW));
    report("stat_absolute", stat_at(ROOT, "/etc", FOLLOW));
    report("stat_empty", stat_at(ROOT, "", FOLLOW));
    report("stat_dot", stat_at(ROOT, ".", FOLLOW));
    report("stat_dangling_follow", stat_at(ROOT, "dangling", FOLLOW));
    report("stat_dangling_nofollow", stat_at(ROOT, "dangling", NOFOLLOW));
    report("stat_loop_follow", stat_at(ROOT, "loop1", FOLLOW));
    report("stat_file_trailing_slash", stat_at(ROOT, "file.txt/", FOLLOW));
    report("stat_up_trailing_slash_nofollow", stat_at(ROOT, "up/", NOFOLLOW));
    report("stat_ok_trailing_slash_nofollow", stat_at(ROOT, "ok/", NOFOLLOW));
    report("readlink_abs", readlink_at(ROOT, "abs"));
    report("readlink_up", readlink_at(ROOT, "up"));
    report("readlink_file", readlink_at(ROOT, "file.txt"));
    report("readlink_dotdot", readlink_at(ROOT, "../outside/x"));
    report("readlink_through_up", readlink_at(ROOT, "up/x"));
    report("mkdir_dotdot", __wasi_path_create_directory(ROOT, "../outside/newdir"));
    report("mkdir_through_up", __wasi_path_create_directory(ROOT, "up/newdir"));
    report("mkdir_existing", __wasi_path_create_directory(ROOT, "sub"));
    report("mkdir_dot", __wasi_path_create_directory(ROOT, "."));
    report("mkdir_dangling", __wasi_path_create_directory(ROOT, "dangling"));
    report("mkdir_trailing_slash", __wasi_path_create_directory(ROOT, "newdir2/"));
    report("unlink_dotdot", __wasi_path_unlink_file(ROOT, "../outside/secret.txt"));
    report("unlink_through_up", __wasi_path_unlink_file(ROOT, "up/outside/secret.txt"));
    report("unlink_dir", __wasi_path_unlink_file(ROOT, "sub"));
    report("unlink_file_trailing_slash", __wasi_path_unlink_file(ROOT, "file.txt/"));
    report("rmdir_dotdot", __wasi_path_remove_directory(ROOT, ".."));
    report("rmdir_dot", __wasi_path_remove_directory(ROOT, "."));
    report("rmdir_sub_dotdot", __wasi_path_remove_directory(ROOT, "sub/.."));
    report("rmdir_file", __wasi_path_remove_directory(ROOT, "file.txt"));
    report("rmdir_symlink_to_dir", __wasi_path_remove_directory(ROOT, "ok"));
    report("rename_to_outside", __wasi_path_rename(ROOT, "file.txt", ROOT, "../outside/moved"));
    report("rename_from_outside", __wasi_path_rename(ROOT, "../outside/secret.txt", ROOT, "stolen"));
    report("rename_through_up", __wasi_path_rename(ROOT, "up/outside/secret.txt", ROOT, "stolen"));
    report("link_to_outside", __wasi_path_link(ROOT, 0, "file.txt", ROOT, "../outside/hl"));
    report("link_from_outside", __wasi_path_link(ROOT, 0, "../outside/secret.txt", ROOT, "hl"));
    report("link_follow_abs", __wasi_path_link(ROOT, FOLLOW, "abs", ROOT, "hl2"));
    report("link_nofollow_up", __wasi_path_link(ROOT, 0, "up", ROOT, "hl3"));
    report("link_follow_chain", __wasi_path_link(ROOT, FOLLOW, "chain1", ROOT, "hl4"));
    report("link_ok", __wasi_path_link(ROOT, 0, "file.txt", ROOT, "hl5"));
    /* Trailing slashes and "." / ".." at the end, per operation. */
    report("mk_lnkfile", __wasi_path_symlink("file.txt", ROOT, "lnkfile"));
    report("mk_tsl", __wasi_path_symlink("sub/", ROOT, "tsl"));
    report("mk_tsf", __wasi_path_symlink("file.txt/", ROOT, "tsf"));
    report("mk_dotlink", __wasi_path_symlink(".", ROOT, "dotlink"));
    report("mk_sub_uplink", __wasi_path_symlink("..", ROOT, "sub/uplink"));
    report("mk_deep_escape", __wasi_path_symlink("sub/../../outside", ROOT, "deepesc"));
    report("mk_emptylink", __wasi_path_symlink("", ROOT, "emptylink"));
    OPEN("tsl_follow", "tsl", FOLLOW, 0, R);
    OPEN("tsl_nofollow", "tsl", NOFOLLOW, 0, R);
    OPEN("tsf_follow", "tsf", FOLLOW, 0, R);
    OPEN("dotlink_through", "dotlink/file.txt", FOLLOW, 0, R);
    OPEN("sub_uplink_through", "sub/uplink/file.txt", FOLLOW, 0, R);
    OPEN("deep_escape_through", "deepesc/secret.txt", FOLLOW, 0, R);
    OPEN("lnkfile_follow", "lnkfile", FOLLOW, 0, R);
    OPEN("lnkfile_trailing_slash", "lnkfile/", FOLLOW, 0, R);
    OPEN("lnkfile_trailing_slash_nofollow", "lnkfile/", NOFOLLOW, 0, R);
    OPEN("creat_trailing_file", "file.txt/", FOLLOW, CREAT, RW);
    OPEN("creat_trailing_dir", "sub/", FOLLOW, CREAT, RW);
    OPEN("creat_trailing_up", "up/", FOLLOW, CREAT, RW);
    OPEN("creat_trailing_abs", "abs/", FOLLOW, CREAT, RW);
    OPEN("creat_trailing_missing_parent", "nope/x/", FOLLOW, CREAT, RW);
    OPEN("creat_trailing_file_parent", "file.txt/x/", FOLLOW, CREAT, RW);
    OPEN("creat_sub_dotdot", "sub/..", FOLLOW, CREAT, RW);
    OPEN("creat_sub_dot", "sub/.", FOLLOW, CREAT, RW);
    OPEN("creat_excl_trailing_new", "newx/", FOLLOW, CREAT | EXCL, RW);
    OPEN("creat_excl_sub_dot", "sub/.", FOLLOW, CREAT | EXCL, RW);
    OPEN("creat_dangling_trailing", "dangling/", FOLLOW, CREAT, RW);
    OPEN("creat_emptylink_follow", "emptylink", FOLLOW, CREAT, RW);
    OPEN("open_emptylink_follow", "emptylink", FOLLOW, 0, R);
    OPEN("dot_nofollow_dir", ".", NOFOLLOW, DIR, R);
    OPEN("ok_dot_nofollow", "ok/.", NOFOLLOW, DIR, R);
    OPEN("dir_trailing_nofollow_trunc", "sub/", NOFOLLOW, TRUNC, RW);
    OPEN("creat_directory_new", "newd", FOLLOW, CREAT | DIR, R);
    OPEN("creat_directory_existing_dir", "sub", FOLLOW, CREAT | DIR, R);
    OPEN("creat_directory_existing_file", "file.txt", FOLLOW, CREAT | DIR, R);
    OPEN("creat_excl_directory_new", "newd2", FOLLOW, CREAT | EXCL | DIR, R);
    OPEN("creat_directory_escape", "../x", FOLLOW, CREAT | DIR, R);
    OPEN("creat_directory_missing_parent", "nope/x", FOLLOW, CREAT | DIR, R);
    OPEN("creat_directory_empty", "", FOLLOW, CREAT | DIR, R);
    {
        char longname[300];
        memset(longname, 'a', 299);
        longname[299] = 0;
        OPEN("open_name_too_long", longname, FOLLOW, 0, R);
    }
    {
        __wasi_fd_t sub;
        if (!__wasi_path_open(ROOT, FOLLOW, "sub", DIR, R, R, 0, &sub)) {
            report("subfd_uplink_through", open_at(sub, "uplink/file.txt", FOLLOW, 0, R));
            report("subfd_uplink_nofollow_stat", stat_at(sub, "uplink", NOFOLLOW));
            report("subfd_dot_slash", open_at(sub, "./", FOLLOW, DIR, R));
            (void)__wasi_fd_close(sub);
        }
    }
    report("mkdir_rd1", __wasi_path_create_directory(ROOT, "rd1"));
    report("mkdir_rd2", __wasi_path_create_directory(ROOT, "rd2"));
    report("mkdir_rd3", __wasi_path_create_directory(ROOT, "rd3"));
    report("mkdir_rd4", __wasi_path_create_directory(ROOT, "rd3/rd4"));
    report("rmdir_trailing", __wasi_path_remove_directory(ROOT, "rd1/"));
    report("rmdir_double_trailing", __wasi_path_remove_directory(ROOT, "rd2//"));
    report("rmdir_nested_trailing", __wasi_path_remove_directory(ROOT, "rd3/rd4/"));
    report("rmdir_link_trailing", __wasi_path_remove_directory(ROOT, "ok/"));
    report("rmdir_file_trailing", __wasi_path_remove_directory(ROOT, "file.txt/"));
    report("rmdir_missing_trailing", __wasi_path_remove_directory(ROOT, "nope/"));
    report("rmdir_sub_dot", __wasi_path_remove_directory(ROOT, "sub/."));
    report("rmdir_sub_dot_trailing", __wasi_path_remove_directory(ROOT, "sub/./"));
    report("rmdir_dot_trailing", __wasi_path_remove_directory(ROOT, "./"));
    report("rmdir_up_trailing", __wasi_path_remove_directory(ROOT, "up/"));
    report("rmdir_dangling_trailing", __wasi_path_remove_directory(ROOT, "dangling/"));
    report("rmdir_abs_trailing", __wasi_path_remove_directory(ROOT, "abs/"));
    report("rmdir_loop_trailing", __wasi_path_remove_directory(ROOT, "loop1/"));
    report("rmdir_nonempty_trailing", __wasi_path_remove_directory(ROOT, "sub/"));
    report("mkdir_rn1", __wasi_path_create_directory(ROOT, "rn1"));
    report("rename_dir_trailing", __wasi_path_rename(ROOT, "rn1/", ROOT, "rn2"));
    report("rename_dir_trailing_both", __wasi_path_rename(ROOT, "rn2/", ROOT, "rn3/"));
    report("rename_file_to_trailing", __wasi_path_rename(ROOT, "sub/hard.txt", ROOT, "x/"));
    report("rename_file_trailing", __wasi_path_rename(ROOT, "sub/hard.txt/", ROOT, "x"));
    report("rename_link_trailing", __wasi_path_rename(ROOT, "ok/", ROOT, "okk"));
    report("rename_dot", __wasi_path_rename(ROOT, ".", ROOT, "x"));
    report("rename_to_dot", __wasi_path_rename(ROOT, "rn3", ROOT, "."));
    report("rename_sub_dotdot", __wasi_path_rename(ROOT, "sub/..", ROOT, "x"));
    report("link_to_trailing", __wasi_path_link(ROOT, 0, "file.txt", ROOT, "lnk/"));
    report("link_from_trailing", __wasi_path_link(ROOT, 0, "file.txt/", ROOT, "lnk2"));
    report("link_dir", __wasi_path_link(ROOT, 0, "sub", ROOT, "lnk3"));
    report("link_from_link_trailing", __wasi_path_link(ROOT, 0, "ok/", ROOT, "lnk4"));
    report("readlink_link_trailing", readlink_at(ROOT, "ok/"));
    report("readlink_empty", readlink_at(ROOT, ""));
    report("readlink_dot", readlink_at(ROOT, "."));
    report("readlink_deepesc", readlink_at(ROOT, "deepesc"));
    report("readlink_gout", readlink_at(ROOT, "gout"));
    report("readlink_chain2", readlink_at(ROOT, "chain2"));
    report("settimes_link_trailing", __wasi_path_filestat_set_times(ROOT, 0, "ok/", 0, 0, 0));
    report("settimes_up_nofollow", __wasi_path_filestat_set_times(ROOT, 0, "up", 0, 0, 0));
    report("settimes_up_follow", __wasi_path_filestat_set_times(ROOT, FOLLOW, "up", 0, 0, 0));
    report("symlink_dot_name", __wasi_path_symlink("x", ROOT, "."));
    report("symlink_sub_dotdot_name", __wasi_path_symlink("x", ROOT, "sub/.."));
    report("unlink_dot", __wasi_path_unlink_file(ROOT, "."));
    report("unlink_sub_dotdot", __wasi_path_unlink_file(ROOT, "sub/.."));
    report("unlink_lnkfile_trailing", __wasi_path_unlink_file(ROOT, "lnkfile/"));
    report("mkdir_sub_dotdot", __wasi_path_create_directory(ROOT, "sub/.."));
    report("mkdir_link_trailing", __wasi_path_create_directory(ROOT, "ok/"));
    report("mkdir_dangling_trailing", __wasi_path_create_directory(ROOT, "dangling/"));
    report("mkdir_empty", __wasi_path_create_directory(ROOT, ""));
    report("unlink_symlink_up", __wasi_path_unlink_file(ROOT, "up"));
    report("unlink_symlink_trailing_slash", __wasi_path_unlink_file(ROOT, "ok/"));
    return 0;
}
