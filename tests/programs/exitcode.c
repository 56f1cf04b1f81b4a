/* Exits with the code given as argv[1] (default 0). With "exit" as argv[2] it calls exit()
 * instead of returning from main, so both ways of ending a WASI command are covered. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 0;
    printf("exiting with %d\n", code);
    if (argc > 2 && strcmp(argv[2], "exit") == 0) {
        fflush(stdout);
        exit(code);
    }
    return code;
}
