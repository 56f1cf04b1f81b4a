/* Prints its arguments, one environment variable, a summary of stdin and a line to stderr:
 * exercises args_get/environ_get, fd_read and both output streams. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    printf("hello from wasm, argc=%d\n", argc);
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    const char *greeting = getenv("WASMIG_GREETING");
    printf("WASMIG_GREETING=%s\n", greeting ? greeting : "(unset)");

    unsigned long bytes = 0, lines = 0, sum = 0;
    int c;
    while ((c = getchar()) != EOF) {
        bytes++;
        lines += c == '\n';
        sum = sum * 31 + (unsigned char)c;
    }
    printf("stdin: %lu bytes, %lu lines, hash %lu\n", bytes, lines, sum & 0xffffffffUL);

    fprintf(stderr, "this goes to stderr\n");
    return 0;
}
