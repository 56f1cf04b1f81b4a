/* An interpreter's hot loop: a bytecode VM whose dispatch is a `switch` in a `for (;;)` over a
 * bytecode array (as in QuickJS, CPython, Lua), with a few opcodes handled by calls (a helper
 * that is not inlined), run for `reps` passes over a loop of `iters` iterations. The frame of
 * run() is live for the whole program, so a checkpoint lands in it (or in a callee) and after a
 * restore it finishes in whatever code the rewind left it in. Prints the result at the end. */
#include <stdio.h>
#include <stdlib.h>

enum { PUSH, LOAD, STORE, ADD, SUB, MUL, XOR, SHR, DUP, DROP, JNZ, JMP, MIX, HALT };

static unsigned long long mem[8];

__attribute__((noinline)) static unsigned long long mix(unsigned long long a, unsigned long long b) {
    a ^= b * 0x9E3779B97F4A7C15ULL;
    return (a << 7) | (a >> 57);
}

__attribute__((noinline)) static unsigned long long run(const int *code, unsigned long long iters) {
    unsigned long long stack[64];
    int sp = 0, pc = 0;
    mem[0] = iters;
    for (;;) {
        int op = code[pc++];
        switch (op) {
        case PUSH: stack[sp++] = (unsigned long long)code[pc++]; break;
        case LOAD: stack[sp++] = mem[code[pc++]]; break;
        case STORE: mem[code[pc++]] = stack[--sp]; break;
        case ADD: sp--; stack[sp - 1] += stack[sp]; break;
        case SUB: sp--; stack[sp - 1] -= stack[sp]; break;
        case MUL: sp--; stack[sp - 1] *= stack[sp]; break;
        case XOR: sp--; stack[sp - 1] ^= stack[sp]; break;
        case SHR: sp--; stack[sp - 1] >>= stack[sp]; break;
        case DUP: stack[sp] = stack[sp - 1]; sp++; break;
        case DROP: sp--; break;
        case JNZ: if (stack[--sp]) pc = code[pc]; else pc++; break;
        case JMP: pc = code[pc]; break;
        case MIX: sp--; stack[sp - 1] = mix(stack[sp - 1], stack[sp]); break;
        case HALT: return mem[1] ^ mem[2];
        default: abort();
        }
    }
}

int main(int argc, char **argv) {
    unsigned reps = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 1;
    unsigned long long iters = argc > 2 ? strtoull(argv[2], 0, 10) : 1000;
    /* mem[0]: counter, mem[1]: accumulator, mem[2]: mixed state */
    static const int prog[] = {
        /* 0 */ LOAD, 1, PUSH, 3, MUL, LOAD, 0, XOR, PUSH, 5, SHR, LOAD, 1, ADD, STORE, 1,
        /* 16 */ LOAD, 0, PUSH, 15, XOR, DUP, PUSH, 1, SUB, DROP, JNZ, 30, LOAD, 2,
        /* 30 → */ LOAD, 2, LOAD, 0, MIX, STORE, 2,
        /* 37 */ LOAD, 0, PUSH, 1, SUB, DUP, STORE, 0, JNZ, 0, HALT,
    };
    unsigned long long r = 0;
    for (unsigned k = 0; k < reps; k++) r ^= run(prog, iters);
    printf("%llu\n", r);
    return 0;
}
