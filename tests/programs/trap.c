/* Traps a few calls deep so a backtrace has named C frames to show: the functions are
 * noinline and the name section is kept by the toolchain. argv[1] picks the trap:
 * "unreachable" (default, __builtin_trap), "divzero", "oob" (a load far outside linear
 * memory) or "abort" (wasi-libc's abort, which is also `unreachable`). Prints a line first,
 * flushed, so a test can check output written before the trap is not lost. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static int innermost_trap(const char *how, volatile int divisor) {
    if (strcmp(how, "divzero") == 0) return 100 / divisor;
    if (strcmp(how, "oob") == 0) return *(volatile int *)(uintptr_t)0xFFFFFFF0u;
    if (strcmp(how, "abort") == 0) abort();
    __builtin_trap();
}

__attribute__((noinline)) static int middle_frame(const char *how, int depth) {
    if (depth > 0) return middle_frame(how, depth - 1) + 1;
    return innermost_trap(how, 0) + 1;
}

__attribute__((noinline)) static int outer_frame(const char *how) { return middle_frame(how, 2) * 2; }

int main(int argc, char **argv) {
    const char *how = argc > 1 ? argv[1] : "unreachable";
    printf("about to trap: %s\n", how);
    fflush(stdout);
    int r = outer_frame(how);
    printf("not reached: %d\n", r);
    return 0;
}
