/* A stdin-to-stdout filter: numbers each line and upper-cases it, the way a Unix pipeline
 * stage would. Reads with fgets into a small buffer so long lines arrive in several pieces,
 * handles a last line without a newline, and writes a summary to stderr -- so stdin
 * (fd_read until EOF), stdout and stderr are all exercised in one run. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    char buf[64];
    unsigned long lines = 0, bytes = 0, longest = 0, cur = 0, letters = 0;
    int at_line_start = 1;
    const char *prefix = argc > 1 ? argv[1] : "";
    while (fgets(buf, sizeof buf, stdin)) {
        size_t n = strlen(buf);
        bytes += n;
        if (at_line_start) {
            lines++;
            printf("%s%5lu: ", prefix, lines);
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)buf[i];
            if (isalpha(c)) letters++;
            buf[i] = (char)toupper(c);
        }
        fputs(buf, stdout);
        at_line_start = n > 0 && buf[n - 1] == '\n';
        cur += n;
        if (at_line_start) {
            if (cur - 1 > longest) longest = cur - 1;
            cur = 0;
        }
    }
    if (!at_line_start) {
        putchar('\n');
        if (cur > longest) longest = cur;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "filter: read error\n");
        return 1;
    }
    fprintf(stderr, "filter: %lu lines, %lu bytes, %lu letters, longest line %lu\n", lines, bytes, letters, longest);
    return lines == 0 ? 3 : 0;
}
