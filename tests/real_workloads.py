"""What the differential harness (tests/differential.py) runs on the real programs, and how much of it it checks.

Each script computes (a sieve, recursive fib, big integers), allocates (objects, strings, maps, a growing list or
typed arrays that grow the wasm memory), runs generators, closures, a sort with a key function or comparator, a
regular expression and JSON, raises and catches exceptions (a custom class, a deep recursion unwound by an exception
through ``finally``), writes files into the preopened ``/out`` (one per round, and a log opened for append every
round, read back at the end) and prints on stdout and stderr. Each is a few seconds at most on wasmtime.

- CPython 3.12: 4 rounds, about 152 million stable points, 2-4 s on wasmtime; its start-up and shutdown alone are far
  beyond the interpreter's reach in a test (issue 15: it did not finish a short script in 600 s), so the interpreter
  takes its snapshots from wasmtime's a few thousand steps earlier, restores to the end only the snapshots of the
  shutdown (the last ``late_steps``), and runs the other fast snapshots ``chain_steps`` before wasmtime finishes them.
- QuickJS-ng: 3 small rounds, about 480,000 stable points: 0.3-0.6 s on wasmtime (mostly instantiation), 10-15 s on the
  interpreter, which restores every snapshot to the end.

``plan(name, points)``: ``points`` snapshots per variant (the quick mode of ``make test`` uses 3; the full harness,
``WASMIG_REAL_POINTS=20`` or ``benchmarks/differential.py``, 20 or more).
"""

from __future__ import annotations

from tests.differential import Plan, Workload

WORK_PY = r'''
import json
import os
import re
import sys

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
out = "/out"


class Odd(Exception):
    def __init__(self, v):
        super().__init__(f"odd {v}")
        self.v = v


def check(i):
    if i % 3 == 0:
        raise Odd(i)
    return {"i": i, "s": str(i) * 3, "l": [i, i + 1, i + 2]}


def depth(n):
    if n == 0:
        raise RecursionError("bottom")
    try:
        return depth(n - 1)
    finally:
        pass


def sieve(n):
    a = bytearray(n + 1)
    c = 0
    for i in range(2, n + 1):
        if not a[i]:
            c += 1
            for j in range(i * i, n + 1, i):
                a[j] = 1
    return c


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def pipeline(n):
    """generators, closures, sorting with a key function, a regular expression, big integers, JSON"""
    squares = (i * i for i in range(n))
    scale = 3

    def key(v):
        return (v * scale) % 97, v

    ordered = sorted(squares, key=key)
    words = re.findall(r"[a-z]+\d", " ".join(f"w{chr(97 + i % 26)}{i % 10}" for i in range(n)))
    big = pow(7, 400 + n, 10**60 + 7) * 3**50
    doc = json.loads(json.dumps({"ordered": ordered[:20], "words": words[:10], "big": str(big)}))
    return len(doc["ordered"]) + len(words) + int(doc["big"]) % 1000


for rnd in range(rounds):
    caught = total = 0
    kept = {}
    for i in range(2000):
        try:
            d = check(i + rnd)
            total += len(d["s"]) + d["l"][2]
            kept[i % 50] = d
        except Odd as e:
            caught += e.v % 7
    try:
        depth(200 + rnd)
    except RecursionError as e:
        caught += len(str(e))
    big = [{"k": f"key{i}", "v": i * 1.5} for i in range(20000 * (rnd + 1))]
    primes = sieve(20000 * (rnd + 1)) + pipeline(300 + rnd)
    with open(f"{out}/round{rnd}.txt", "w") as f:
        f.write(f"round {rnd} caught {caught} total {total} kept {len(kept)} fib {fib(15 + rnd)} primes {primes} "
                f"big {len(big)}\n")
    with open(f"{out}/log.txt", "a") as f:
        f.write(f"round {rnd} " + json.dumps(big[:3]) + "\n")
    print(f"round {rnd}: caught={caught} total={total} primes={primes}", flush=True)
    print(f"progress {rnd}", file=sys.stderr, flush=True)
    del big, kept  # freed now, not by the interpreter's shutdown (which the interpreter engine restores late runs of)
with open(f"{out}/log.txt") as f:
    back = f.read()
print("log bytes", len(back), "lines", len(back.splitlines()))
print("files", sorted(os.listdir(out)))
'''

WORK_JS = r'''
import * as std from 'qjs:std';
const rounds = scriptArgs.length > 1 ? Number(scriptArgs[1]) : 3;
const out = '/out';
class Odd extends Error { constructor(v) { super('odd ' + v); this.v = v; } }
function check(i) { if (i % 3 === 0) throw new Odd(i); return {i, s: String(i).repeat(3), l: [i, i + 1, i + 2]}; }
function depth(n) { if (n === 0) throw new RangeError('bottom'); try { return depth(n - 1); } finally { } }
function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
function* squares(n) { for (let i = 0; i < n; i++) yield i * i; }
function pipeline(n) {  // a generator, a closure, sort with a comparator, a regular expression, BigInt, JSON
  const scale = 3;
  const ordered = [...squares(n)].sort((a, b) => (a * scale) % 97 - (b * scale) % 97 || a - b);
  const words = Array.from({length: n}, (_, i) => 'w' + String.fromCharCode(97 + i % 26) + (i % 10)).join(' ')
    .match(/[a-z]+\d/g);
  const big = 7n ** BigInt(40 + n) % (10n ** 30n + 7n);
  const doc = JSON.parse(JSON.stringify({ordered: ordered.slice(0, 5), words: words.slice(0, 5), big: String(big)}));
  return doc.ordered.length + words.length + Number(BigInt(doc.big) % 1000n);
}
function sieve(n) {
  const a = new Uint8Array(n + 1); let c = 0;
  for (let i = 2; i <= n; i++) if (!a[i]) { c++; for (let j = i * i; j <= n; j += i) a[j] = 1; }
  return c;
}
const keep = [];
for (let round = 0; round < rounds; round++) {
  let caught = 0, total = 0; const kept = new Map();
  for (let i = 0; i < 30; i++) {
    try { const d = check(i + round); total += d.s.length + d.l[2]; kept.set(i % 7, d); }
    catch (e) { if (!(e instanceof Odd)) throw e; caught += e.v % 7; }
  }
  try { depth(20 + round); } catch (e) { caught += e.message.length; }
  keep.push(new Uint8Array(1 << (18 + round)));  // grows the wasm memory
  keep[round][round * 7] = round + 1;
  const f = std.open(out + '/round' + round + '.txt', 'w');
  f.puts(`round ${round} caught ${caught} total ${total} kept ${kept.size} fib ${fib(8 + round)} ` +
         `primes ${sieve(300 * (round + 1)) + pipeline(20 + round)}\n`);
  f.close();
  const a = std.open(out + '/log.txt', 'a');
  a.puts('round ' + round + ' ' + JSON.stringify([...kept.values()].slice(0, 2)) + '\n');
  a.close();
  console.log(`round ${round}: caught=${caught} total=${total}`);
  std.err.puts('progress ' + round + '\n');
}
const back = std.loadFile(out + '/log.txt');
console.log('log bytes ' + back.length + ' lines ' + back.split('\n').length + ' kept ' +
            keep.reduce((s, a, i) => s + a[i * 7], 0));
'''

WORKLOADS = {
    "cpython": Workload("cpython", "cpython", ("/app/work.py", "4"), {"work.py": WORK_PY.lstrip()},
                        # a fixed hash seed (else CPython asks random_get for one) and no .pyc written into /app
                        {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}),
    "quickjs": Workload("quickjs", "quickjs", ("/app/work.js", "3"), {"work.js": WORK_JS.lstrip()}),
}


def plan(name: str, points: int) -> Plan:
    """The harness's plan for workload ``name`` with ``points`` snapshots per variant. CPython: of the deterministic
    ones, a tenth (at least one) in its last 300,000 stable points (the end of its shutdown: a second or two on the
    interpreter), restored there to the end; of the fast ones, as many requested just after its last line of output
    (about 2.2 million stable points before the end: 3-20 s on the interpreter), restored there to the end too;
    every other fast snapshot runs 2,000 steps on the interpreter before wasmtime finishes it."""
    if name == "cpython":
        late = max(1, points // 10)
        return Plan(points, points, interp="late", interp_from_start=False, late_points=late, late_steps=300_000,
                    fast_late_points=late, late_marker=b"files [", fast_late_to_end=True, chain_steps=2000)
    return Plan(points, points)
