/* Directory listing through opendir/readdir (fd_readdir underneath) in the preopened
 * directory argv[1]. Creates enough long-named entries that the listing does not fit in
 * wasi-libc's first readdir buffer, so the engine's cookies are used to continue; then
 * exercises telldir/seekdir (which hand a cookie back to the engine) and rewinddir.
 * Names are sorted before printing because WASI does not specify the order, and the same
 * order is not needed for correctness -- the same set of names is. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_NAMES 256
#define N_FILES 70

static char *names[MAX_NAMES];
static int n_names;

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static const char *dtype(unsigned char t) {
    switch (t) {
    case DT_REG: return "file";
    case DT_DIR: return "dir";
    case DT_LNK: return "symlink";
    case DT_UNKNOWN: return "unknown";
    default: return "other";
    }
}

static void clear(void) {
    for (int i = 0; i < n_names; i++) free(names[i]);
    n_names = 0;
}

/* Reads the rest of a stream into names[] as "name (type)"; returns how many were read. */
static int collect(DIR *d) {
    int count = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL) {
        char line[300];
        snprintf(line, sizeof line, "%s (%s)", e->d_name, dtype(e->d_type));
        if (n_names < MAX_NAMES) names[n_names++] = strdup(line);
        count++;
    }
    if (errno) printf("readdir failed: errno=%d\n", errno);
    return count;
}

static void print_sorted(const char *title) {
    qsort(names, n_names, sizeof names[0], cmp);
    printf("%s: %d entries\n", title, n_names);
    for (int i = 0; i < n_names; i++) printf("  %s\n", names[i]);
}

/* A fingerprint of the current names (sorted), to compare listings without printing them twice. */
static unsigned long fingerprint(void) {
    qsort(names, n_names, sizeof names[0], cmp);
    unsigned long h = 5381;
    for (int i = 0; i < n_names; i++)
        for (const char *p = names[i]; *p; p++) h = h * 33 + (unsigned char)*p;
    return h ^ (unsigned long)n_names;
}

static void touch(const char *path, const char *text) {
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0) {
        printf("create %s failed: errno=%d\n", path, errno);
        return;
    }
    write(fd, text, strlen(text));
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: listdir DIR\n");
        return 2;
    }
    char path[512], dir[400];
    snprintf(dir, sizeof dir, "%s/many", argv[1]);

    /* 1. the preopened directory as prepared by the host */
    DIR *d = opendir(argv[1]);
    if (!d) {
        printf("opendir %s failed: errno=%d\n", argv[1], errno);
        return 1;
    }
    collect(d);
    closedir(d);
    print_sorted("prepared root");
    clear();

    /* 2. an empty directory still has "." and ".." */
    snprintf(path, sizeof path, "%s/empty", argv[1]);
    printf("mkdir empty: %d\n", mkdir(path, 0755));
    d = opendir(path);
    collect(d);
    closedir(d);
    print_sorted("empty");
    clear();

    /* 3. many long names: more than one fd_readdir buffer's worth */
    printf("mkdir many: %d\n", mkdir(dir, 0755));
    for (int i = 0; i < N_FILES; i++) {
        snprintf(path, sizeof path, "%s/entry_%03d_%.*s", dir, i, 40 + i % 60,
                 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz");
        touch(path, "x");
    }
    snprintf(path, sizeof path, "%s/subdir", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/link", dir);
    symlink("subdir", path);
    snprintf(path, sizeof path, "%s/unicodé-файл-😀.txt", dir);
    touch(path, "unicode");

    d = opendir(dir);
    int total = collect(d);
    unsigned long full = fingerprint();
    printf("many: %d entries, fingerprint %lu\n", total, full);
    for (int i = 0; i < n_names; i++)
        if (i < 3 || i >= n_names - 4) printf("  %s\n", names[i]);
    clear();

    /* 4. rewinddir: the same set again */
    rewinddir(d);
    int again = collect(d);
    printf("after rewinddir: %d entries, same=%d\n", again, fingerprint() == full);
    clear();

    /* 5. telldir after k entries, read the rest, seekdir back, read the rest again */
    rewinddir(d);
    int k = 37;
    for (int i = 0; i < k; i++) readdir(d);
    long mark = telldir(d);
    int rest = collect(d);
    unsigned long rest_fp = fingerprint();
    clear();
    seekdir(d, mark);
    int rest2 = collect(d);
    printf("seekdir: rest %d then %d, same=%d, sum ok=%d\n", rest, rest2, fingerprint() == rest_fp,
           k + rest == total);
    clear();
    closedir(d);

    /* 6. deleting some entries changes the listing */
    for (int i = 0; i < N_FILES; i += 2) {
        snprintf(path, sizeof path, "%s/entry_%03d_%.*s", dir, i, 40 + i % 60,
                 "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz");
        if (unlink(path) != 0) printf("unlink %d failed: errno=%d\n", i, errno);
    }
    d = opendir(dir);
    printf("after unlinking half: %d entries\n", collect(d));
    closedir(d);
    clear();

    /* 7. errors */
    snprintf(path, sizeof path, "%s/nope", argv[1]);
    d = opendir(path);
    printf("opendir missing: %s errno=%d\n", d ? "opened" : "NULL", d ? 0 : errno);
    snprintf(path, sizeof path, "%s/many/link", argv[1]);
    d = opendir(path);
    printf("opendir via symlink: %s\n", d ? "opened" : "NULL");
    if (d) closedir(d);
    snprintf(path, sizeof path, "%s/many/unicodé-файл-😀.txt", argv[1]);
    d = opendir(path);
    printf("opendir on a file: %s errno=%d\n", d ? "opened" : "NULL", d ? 0 : errno);
    return 0;
}
