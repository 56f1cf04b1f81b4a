/* README.md's prog.wasm (tests/test_readme.py): a program to checkpoint, restore or migrate by
 * hand. Prints "tick I CHECKSUM" every 100 ms, 100 times (about 10 s: long enough for a README
 * block's `wasmig checkpoint PID` or `wasmig migrate $!` on a loaded machine), then "done".
 *   ticker [TICKS [MS]]   (defaults 100, 100) */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int ticks = argc > 1 ? atoi(argv[1]) : 100;
    int ms = argc > 2 ? atoi(argv[2]) : 100;
    unsigned h = 2166136261u;
    for (int i = 0; i < ticks; i++) {
        for (int k = 0; k < 10000; k++) h = (h ^ (unsigned)(i * k)) * 16777619u;
        printf("tick %d %08x\n", i, h);
        fflush(stdout);
        if (ms) usleep((useconds_t)ms * 1000);
    }
    printf("done\n");
    return 0;
}
