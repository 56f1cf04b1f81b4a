"""The wasmtime engine (``wasmig run --engine wasmtime``): compiled code, wasmig's own WASI.

The reference here is wasmig's own interpreter: every program the WASI differential tests run
(``tests/test_wasi_programs.py``'s CASES, the sandbox escapes, big I/O) must give the same
stdout, stderr, exit code and files under both engines, each in a fresh copy of the same
prepared tree, and a trap the same reason and backtrace lines (function names and byte offsets).
Beyond that: the TCP echo server on wasmtime, the compiled-artifact cache (a second compile is a
cache hit and much faster; damaged entries are recompiled), a guest that grows its memory (the
WASI layer's view of linear memory must follow it, even when wasmtime moves it), host-function
exceptions coming out of the wasm call as themselves, trap reasons for every kind of trap, and
the CLI refusing to checkpoint or restore on wasmtime (the instrumentation pass is missing).
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_wasi_programs import (
    CASES,
    SANDBOX,
    empty_sandbox,
    escape_tree,
)
from tests.wasi_harness import REPO, DirSpec, RunResult, compare, copy_tree, program, run_wasmig, wasmig_command
from wasmig import toolchain

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV),
        reason="ziglang is not installed (pip install ziglang)",
    ),
    pytest.mark.skipif(importlib.util.find_spec("wasmtime") is None, reason="wasmtime is not installed"),
]

ENGINES = ("interp", "wasmtime")


def run_engines(
    name: str,
    args: list[str] | tuple[str, ...] = (),
    *,
    work: Path,
    env: dict[str, str] | None = None,
    dirs: list[DirSpec] | tuple[DirSpec, ...] = (),
    prepare: Callable[[Path], None] | None = None,
    stdin: bytes = b"",
    timeout: float = 120.0,
) -> dict[str, RunResult]:
    """``wasmig run --engine E`` for both engines, each in its own copy of the prepared tree."""
    wasm = program(name)
    prepared = work / "prepared"
    prepared.mkdir(parents=True)
    if prepare is not None:
        prepare(prepared)
    use_tree = bool(dirs) or prepare is not None
    results = {}
    for engine in ENGINES:
        copy_tree(prepared, work / engine)
        results[engine] = run_wasmig(
            wasm, args, env=env, dirs=dirs, tree=work / engine if use_tree else None, stdin=stdin,
            timeout=timeout, engine=engine,
        )
    return results


def assert_same(results: dict[str, RunResult], *, files: bool = True) -> None:
    problems = compare(results["interp"], results["wasmtime"], files=files, names=("interp", "wasmtime"))
    assert not problems, "--engine wasmtime diverges from --engine interp:\n" + "\n".join(problems)


# --- the differential programs -------------------------------------------------------------------
EXTRA_CASES = [
    ("exitcode-126", "exitcode", ["126"], {}, b"", [], None),
    ("exitcode-200-exit", "exitcode", ["200", "exit"], {}, b"", [], None),
    ("exitcode-255", "exitcode", ["255"], {}, b"", [], None),
    ("hello-stdin", "hello", ["x", "two words"], {"WASMIG_GREETING": "hi"}, b"some input\nmore\n", [], None),
]


@pytest.mark.parametrize(
    ("program_name", "args", "env", "stdin", "dirs", "prepare"),
    [c[1:] for c in [*CASES, *EXTRA_CASES]],
    ids=[c[0] for c in [*CASES, *EXTRA_CASES]],
)
def test_program_same_on_both_engines(
    program_name: str,
    args: list[str],
    env: dict[str, str],
    stdin: bytes,
    dirs: list[DirSpec],
    prepare: Callable[[Path], None] | None,
    tmp_path: Path,
) -> None:
    results = run_engines(program_name, args, work=tmp_path, env=env, dirs=dirs, prepare=prepare, stdin=stdin)
    assert results["wasmtime"].stdout or results["wasmtime"].stderr or results["wasmtime"].exit_code == 0
    assert_same(results)


def test_sandbox_escape_same_on_both_engines(tmp_path: Path) -> None:
    results = run_engines("sandbox_escape", ["/sandbox"], work=tmp_path, dirs=[SANDBOX], prepare=escape_tree)
    got = results["wasmtime"]
    assert got.stdout.count(b"control:") >= 6, "the program did not run to the end on wasmtime"
    assert sorted(os.listdir(tmp_path / "wasmtime")) == ["outside", "sandbox"]
    assert_same(results)


TRAP_KINDS = ["unreachable", "divzero", "oob", "abort"]


@pytest.mark.parametrize("kind", TRAP_KINDS)
def test_trap_backtrace_same_on_both_engines(kind: str, tmp_path: Path) -> None:
    """Reason and every backtrace line identical, offsets included. For ``__builtin_trap``,
    Cranelift folds the branch to the trap into a conditional trap at the ``br_if``; the engine
    maps that back to the ``unreachable`` the branch leads to, which is what the interpreter
    reports."""
    results = run_engines("trap", [kind], work=tmp_path)
    for engine, result in results.items():
        assert result.exit_code == 134, f"{engine}: {result.stderr.decode(errors='replace')}"
        assert b"wasm backtrace:" in result.stderr and b"innermost_trap" in result.stderr, engine
        assert b"Traceback" not in result.stderr
    assert_same(results)


@pytest.mark.slow
def test_bigio_same_on_both_engines(tmp_path: Path) -> None:
    results = run_engines("bigio", ["/sandbox"], work=tmp_path, dirs=[SANDBOX], prepare=empty_sandbox, timeout=900)
    interp_s, wasmtime_s = results["interp"].wall_s, results["wasmtime"].wall_s
    print(f"\nbigio: --engine interp {interp_s:.2f} s, --engine wasmtime {wasmtime_s:.2f} s")
    got = results["wasmtime"]
    assert got.exit_code == 0 and b"0 bad" in got.stdout
    assert got.files["sandbox/big.bin"][1] == 10 * 1024 * 1024
    assert_same(results)


def test_checksum_timing(tmp_path: Path) -> None:
    results = run_engines("checksum", work=tmp_path)
    print(f"\nchecksum: --engine interp {results['interp'].wall_s:.2f} s, "
          f"--engine wasmtime {results['wasmtime'].wall_s:.2f} s (wall, including process start)")
    assert_same(results)


# --- memory.grow ------------------------------------------------------------------------------
def test_memory_grow_keeps_the_wasi_view_valid(tmp_path: Path) -> None:
    """bigmem mallocs 24 MiB (the memory grows from a few pages) and prints after every round
    through fd_write: the WASI layer must read the new, larger memory."""
    results = run_engines("bigmem", ["24", "3", "65536"], work=tmp_path)
    assert results["wasmtime"].exit_code == 0 and results["wasmtime"].stdout.endswith(b"done\n")
    assert_same(results)


@pytest.mark.parametrize("fast", [True, False], ids=["raw-callback", "public-api"])
def test_memory_view_in_process_after_growth(fast: bool) -> None:
    from wasmig import Module
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.session.command import run_start
    from wasmig.wasi.preview1 import Wasi

    module = Module.from_file(program("bigmem"))
    out = io.BytesIO()
    wasi = Wasi(["bigmem", "24", "2", "65536"], stdout=out)
    inst = WasmtimeInstance(module, wasi, fast_host_calls=fast)
    initial = len(inst.memory_view())
    assert run_start(inst) == 0
    memory = inst.exports["memory"]
    grown = memory.data_len(inst.store)
    assert grown > initial + 24 * 1024 * 1024
    assert len(inst.memory_view()) == grown and len(wasi.memory.buf) == grown
    wasi.memory.set_u32(grown - 4, 0xDEADBEEF)  # the last word: only reachable through a fresh view
    assert memory.read(inst.store, grown - 4, grown) == (0xDEADBEEF).to_bytes(4, "little")
    assert out.getvalue().endswith(b"done\n")


GROW_WAT = """
(module
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32) local.get 0 memory.grow)
  (func (export "load") (param i32) (result i32) local.get 0 i32.load))
"""


def test_memory_view_follows_a_memory_that_moves() -> None:
    """With no address-space reservation wasmtime must move the memory on every grow; the view
    is re-derived each time (a stale one would write into freed memory)."""
    import wasmtime

    from wasmig.engines.wasmtime.runtime import LinearMemoryView
    from wasmig.wasi.memory import GuestMemory

    config = wasmtime.Config()
    config.memory_reservation = 0
    config.memory_guard_size = 0
    config.memory_reservation_for_growth = 0
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    exports = wasmtime.Instance(store, wasmtime.Module(engine, GROW_WAT), []).exports(store)
    view = LinearMemoryView(store, exports["memory"])
    mem = GuestMemory(view)
    mem.set_u32(100, 0x12345678)
    addresses = set()
    for k in range(12):
        exports["grow"](store, 2)
        size = len(view())
        assert size == (3 + 2 * k) * 65536
        addresses.add(view._addr)
        mem.set_u32(size - 4, k)
        assert exports["load"](store, size - 4) == k
        assert mem.u32(100) == 0x12345678
    assert len(addresses) > 1, "the memory never moved: this test no longer tests re-deriving the view"


# --- host exceptions and traps, in process ---------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False], ids=["raw-callback", "public-api"])
def test_host_exceptions_come_out_as_themselves(fast: bool) -> None:
    from wasmig import Module
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.errors import HostCallInterrupted
    from wasmig.session.command import run_command
    from wasmig.wasi.preview1 import ProcExit, Wasi

    out = io.BytesIO()
    assert run_command(Module.from_file(program("exitcode")), Wasi(["exitcode", "42", "exit"], stdout=out),
                       "wasmtime", fast_host_calls=fast) == 42
    assert out.getvalue() == b"exiting with 42\n"
    inst = WasmtimeInstance(Module.from_file(program("exitcode")), Wasi(["exitcode", "7"], stdout=io.BytesIO()),
                            fast_host_calls=fast)
    with pytest.raises(ProcExit) as exit_info:
        inst.invoke("_start")
    assert exit_info.value.code == 7
    # a checkpoint request while blocked in poll_oneoff: the call is abandoned with HostCallInterrupted
    out = io.BytesIO()
    wasi = Wasi(["stdin_wait", "sleep", "30"], stdout=out)
    inst = WasmtimeInstance(Module.from_file(program("stdin_wait")), wasi, fast_host_calls=fast)
    wasi.waiter.request()
    start = time.monotonic()
    with pytest.raises(HostCallInterrupted):
        inst.invoke("_start")
    assert time.monotonic() - start < 10


RAW_ARGS_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "seek") (param i32 i64 i32 i32) (result i32)
    local.get 0 local.get 1 local.get 2 local.get 3 call $seek))
"""


@pytest.mark.parametrize("fast", [True, False], ids=["raw-callback", "public-api"])
def test_host_functions_get_unsigned_bit_patterns(fast: bool) -> None:
    """Host functions get unsigned bit patterns, on both host-call paths: the raw C callback and
    wasmtime-py's public ``define_func`` (which passes signed ints, masked by the engine)."""
    import wasmtime

    import wasmig
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance
    from wasmig.wasi.preview1 import Wasi

    seen: list[tuple[int, ...]] = []

    class Recording(Wasi):
        def fd_seek(self, *args: int) -> int:
            seen.append(args)
            return 8  # EBADF, passed back to the guest as the i32 result

    module = wasmig.Module.from_bytes(bytes(wasmtime.wat2wasm(RAW_ARGS_WAT)))
    inst = WasmtimeInstance(module, Recording(), fast_host_calls=fast)
    assert inst.invoke("seek", -1, -2, 2**31, 5) == 8
    assert inst.invoke("seek", 7, 2**63, 0, 0xFFFFFFFF) == 8
    assert seen == [(0xFFFFFFFF, 2**64 - 2, 2**31, 5), (7, 2**63, 0, 0xFFFFFFFF)]


TRAPS_WAT = r"""
(module
  (type $v_i (func (result i32)))
  (table 4 funcref)
  (elem (i32.const 0) $one $takes)
  (memory (export "memory") 1)
  (func $one (result i32) i32.const 1)
  (func $takes (param i32) (result i32) local.get 0)
  (func (export "call") (param i32) (result i32) local.get 0 call_indirect (type $v_i))
  (func (export "div") (param i32 i32) (result i32) local.get 0 local.get 1 i32.div_s)
  (func (export "rem") (param i64 i64) (result i64) local.get 0 local.get 1 i64.rem_u)
  (func (export "trunc") (param f64) (result i32) local.get 0 i32.trunc_f64_s)
  (func (export "load") (param i32) (result i32) local.get 0 i32.load offset=4)
  (func (export "fill") (param i32) local.get 0 i32.const 0 i32.const 16 memory.fill)
  (func $rec (export "rec") (param i32) (result i32) local.get 0 i32.const 1 i32.add call $rec)
  (func (export "tget") (param i32) (result funcref) local.get 0 table.get 0)
  (func (export "brif") (param i32) (result i32) block local.get 0 br_if 0 unreachable end i32.const 7)
  (func (export "brif2") (param i32) (result i32)
    block block local.get 0 br_if 1 i32.const 5 drop end end unreachable)
  (func (export "ifu") (param i32) (result i32) local.get 0 if unreachable end i32.const 8)
  (func $deep (export "deep") (param i32) (result i32)
    local.get 0 i32.eqz if unreachable end local.get 0 i32.const 1 i32.sub call $deep))
"""

TRAP_CALLS = [
    ("call", (1,)), ("call", (2,)), ("call", (9,)), ("div", (1, 0)), ("div", (-(2**31), -1)), ("rem", (5, 0)),
    ("trunc", (1e10,)), ("trunc", (float("nan"),)), ("load", (65533,)), ("fill", (65530,)), ("tget", (10,)),
    ("brif", (0,)), ("brif2", (0,)), ("ifu", (1,)), ("deep", (5,)),
    ("call", (0,)), ("brif", (1,)), ("ifu", (0,)),  # these return
]


@pytest.mark.parametrize(("name", "args"), TRAP_CALLS, ids=[f"{n}{a}" for n, a in TRAP_CALLS])
def test_trap_reason_and_backtrace_match_the_interpreter(name: str, args: tuple) -> None:
    import wasmtime

    import wasmig
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance

    module = wasmig.Module.from_bytes(bytes(wasmtime.wat2wasm(TRAPS_WAT)))
    outcomes = []
    for inst in (wasmig.Instance(module), WasmtimeInstance(module)):
        try:
            outcomes.append(("returned", inst.invoke(name, *args)))
        except wasmig.Trap as e:
            outcomes.append((type(e).__name__, e.reason, e.backtrace))
    interp, compiled = outcomes
    if interp[0] == "Trap" and interp[1].startswith(("undefined element", "uninitialized element")):
        # the interpreter names the table index; wasmtime does not report it
        assert compiled[1] == interp[1].rsplit(" ", 1)[0]
        interp = (interp[0], compiled[1], interp[2])
    assert compiled == interp


def test_stack_exhaustion_is_an_exhaustion_trap() -> None:
    import wasmtime

    import wasmig
    from wasmig.engines.wasmtime.runtime import WasmtimeInstance

    module = wasmig.Module.from_bytes(bytes(wasmtime.wat2wasm(TRAPS_WAT)))
    traps = []
    for inst in (wasmig.Instance(module), WasmtimeInstance(module)):
        with pytest.raises(wasmig.Exhaustion) as info:
            inst.invoke("rec", 0)
        traps.append(info.value)
    interp, compiled = traps
    assert compiled.reason == interp.reason == "call stack exhausted"
    # every frame is the recursive call, as the interpreter reports it (which does not enter the
    # callee that would overflow); wasmtime captures only the innermost 20 frames
    assert len(compiled.backtrace) == 19 and set(compiled.backtrace) == set(interp.backtrace) == {
        interp.backtrace[0]}


# --- the compiled-artifact cache ---------------------------------------------------------------------
def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_artifact_cache_hit_is_much_faster_and_damage_is_recompiled(tmp_path: Path) -> None:
    from wasmig.engines.wasmtime import runtime as engine

    data = program("sandbox_escape").read_bytes()
    before = dict(engine.cache_stats)
    compile_s = _timed(lambda: engine.compile_module(data, tmp_path))
    entries = list(tmp_path.glob("*.cwasm"))
    assert len(entries) == 1 and entries[0].name == f"{engine.cache_key(data)}.cwasm"
    hit_s = min(_timed(lambda: engine.compile_module(data, tmp_path)) for _ in range(3))
    assert engine.cache_stats["miss"] == before["miss"] + 1 and engine.cache_stats["hit"] == before["hit"] + 3
    print(f"\ncompile {compile_s * 1000:.1f} ms, cache hit {hit_s * 1000:.1f} ms")
    assert hit_s < compile_s / 4, f"a cache hit ({hit_s:.4f} s) is not much faster than compiling ({compile_s:.4f} s)"

    from wasmig import checked
    from wasmig.hashing import fast_hash

    good = entries[0].read_bytes()
    checksum = checked.sum_path(entries[0])
    good_sum = checksum.read_bytes()
    assert good_sum.startswith(checked.MAGIC + fast_hash(good).digest()), "the sidecar names the artifact's digest"
    refused = b"\x7fELF not really a compiled module" * 10
    damaged = {  # (the .cwasm, the .sum: "good", None for none, else bytes)
        "flipped bit": (good[:-100] + bytes([good[-100] ^ 0x10]) + good[-99:], "good"),
        "truncated": (good[: len(good) // 2], "good"),
        "empty": (b"", "good"),
        "garbage": (os.urandom(4096), "good"),
        "no checksum": (good, None),
        "damaged checksum": (good, good_sum[:-1]),
        # a valid checksum over bytes wasmtime refuses (as an entry of another wasmtime build would be)
        "refused payload": (refused, "valid"),
    }
    for what, (blob, sums) in damaged.items():
        entries[0].write_bytes(blob)
        if sums is None:
            checksum.unlink()
        elif sums == "valid":
            checksum.write_bytes(checked._sum(fast_hash(blob).digest(), entries[0].stat()))
        else:
            checksum.write_bytes(good_sum if sums == "good" else sums)
        corrupt = engine.cache_stats["corrupt"]
        compiled = engine.compile_module(data, tmp_path)
        assert engine.cache_stats["corrupt"] == corrupt + 1, what
        assert {e.name for e in compiled.exports} >= {"_start", "memory"}, what
        assert engine._load(entries[0])[0] is not None, f"{what}: the entry was not rewritten"
        assert entries[0].read_bytes()[:64] == good[:64] and checksum.read_bytes()[:16] == good_sum[:16], what
    assert {p.suffix for p in tmp_path.iterdir()} == {".cwasm", ".sum"}, "temporary files left behind"


def test_unwritable_cache_is_not_fatal(tmp_path: Path) -> None:
    from wasmig import Module
    from wasmig.engines.wasmtime import runtime as engine
    from wasmig.session.command import run_command
    from wasmig.wasi.preview1 import Wasi

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    unwritable = engine.cache_stats["unwritable"]
    out = io.BytesIO()
    code = run_command(Module.from_file(program("exitcode")), Wasi(["exitcode", "3"], stdout=out), "wasmtime",
                       cache_dir=blocker / "cache")
    assert code == 3 and out.getvalue() == b"exiting with 3\n"
    assert engine.cache_stats["unwritable"] == unwritable + 1


def test_cli_uses_the_cache_under_wasmig_cache(tmp_path: Path) -> None:
    """``$WASMIG_CACHE/wasmtime``: written by the first run, read by the second; a damaged entry
    is recompiled and replaced without the user noticing."""
    wasm = str(program("hello"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "WASMIG_CACHE": str(tmp_path)}

    def run() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*wasmig_command("wasmtime"), wasm, "a"], input=b"in\n", capture_output=True,
                              env=env, timeout=60)

    first = run()
    assert first.returncode == 0, first.stderr
    entries = list((tmp_path / "wasmtime").glob("*.cwasm"))
    assert len(entries) == 1
    mtime = entries[0].stat().st_mtime_ns
    second = run()
    assert (second.returncode, second.stdout, second.stderr) == (first.returncode, first.stdout, first.stderr)
    assert entries[0].stat().st_mtime_ns == mtime, "a cache hit must not rewrite the entry"
    entries[0].write_bytes(entries[0].read_bytes()[:1000])
    third = run()
    assert (third.returncode, third.stdout, third.stderr) == (first.returncode, first.stdout, first.stderr)
    assert entries[0].stat().st_size > 1000, "the damaged entry was not replaced"


# --- the CLI ------------------------------------------------------------------------------------------
def _wasmig(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "wasmig", *args], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize(
    "options",
    [["--checkpoint-at-instruction", "9"], ["--checkpoint-dir", "CKPT", "--checkpoint-at-instruction", "9"]],
    ids=lambda o: " ".join(o),
)
def test_instruction_checkpoints_are_refused_on_wasmtime(options: list[str], tmp_path: Path) -> None:
    """Instruction-precise stops exist on the interpreter only; asking for one on wasmtime is a
    one-line error (without --engine, such a run simply goes to the interpreter)."""
    from wasmig.cli.common import INTERP_ONLY

    options = [str(tmp_path / "ckpt") if o == "CKPT" else o for o in options]
    proc = _wasmig("run", "--engine", "wasmtime", *options, str(program("exitcode")))
    assert (proc.returncode, proc.stdout, proc.stderr.decode()) == (1, b"", f"wasmig: error: {INTERP_ONLY}\n")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("pair", ["wasmtime-interp", "interp-wasmtime", "wasmtime-wasmtime"])
@pytest.mark.parametrize("step", [1, 2, 700, 3000, 12000])
def test_checkpoint_on_one_engine_restores_on_another(step: int, pair: str, tmp_path: Path) -> None:
    """``run --engine A --checkpoint-at-step N --checkpoint-then exit`` then ``restore --engine B``:
    the two halves together print exactly what one uninterrupted run prints, and leave the same
    files (open files resumed at their offsets)."""
    engine_a, engine_b = pair.split("-")
    wasm = str(program("fileops"))
    (tmp_path / "whole").mkdir()
    (tmp_path / "split").mkdir()
    whole = _wasmig("run", "--dir", f"{tmp_path / 'whole'}::/data", wasm, "/data")
    first = _wasmig("run", "--engine", engine_a, "--dir", f"{tmp_path / 'split'}::/data", "--checkpoint-dir",
                    str(tmp_path / "ck"), "--checkpoint-at-step", str(step), "--checkpoint-then", "exit", wasm, "/data")
    assert first.returncode == 0, first.stderr
    assert b"checkpoint written to" in first.stderr
    second = _wasmig("restore", "--engine", engine_b, str(tmp_path / "ck"))
    assert second.returncode == whole.returncode, second.stderr
    assert first.stdout + second.stdout == whole.stdout
    for path in (tmp_path / "whole").rglob("*"):
        twin = tmp_path / "split" / path.relative_to(tmp_path / "whole")
        assert twin.is_symlink() == path.is_symlink()
        if path.is_file() and not path.is_symlink():
            assert twin.read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"\0asm\x01\0\0\0", "_start"), (b"\0asm\x01\0\0\0\x01\x04\x01\x60\x00\x00\x02\x0b\x01\x03env\x03foo\x00\x00",
                                       "env.foo")],
    ids=["no-start", "unknown-import"],
)
def test_unrunnable_module_is_a_one_line_error_on_wasmtime(content: bytes, needle: str, tmp_path: Path) -> None:
    mod = tmp_path / "mod.wasm"
    mod.write_bytes(content)
    proc = _wasmig("run", "--engine", "wasmtime", str(mod))
    err = proc.stderr.decode()
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert err == _wasmig("run", "--engine", "interp", str(mod)).stderr.decode()


#: WAT of ``$go``, which prints ``go`` (fd_write; memory 0's bytes 0-19): a guest that calls it
#: right before it spins tells the test so. A fixed 2 s pause stood for it: a loaded machine may
#: take longer to start Python and compile the module, and a SIGINT then hit the start-up instead.
SAYS_GO = """(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (func $go
    (i32.store (i32.const 16) (i32.const 0x0a6f67))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"""


def wait_for_go(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until ``proc`` (its stdout a pipe) printed SAYS_GO's line."""
    import select

    assert proc.stdout is not None
    assert select.select([proc.stdout], [], [], timeout)[0], f"the guest did not start within {timeout:g} s"
    assert proc.stdout.readline() == b"go\n"


@pytest.mark.parametrize("plain", [True, False])
def test_ctrl_c_ends_a_guest_that_never_calls_the_host(tmp_path: Path, plain: bool) -> None:
    """Python only sees SIGINT when it runs again; a guest spinning in compiled code never lets it,
    so a ``--plain`` run on wasmtime gives SIGINT its default action (as ``wasmtime run`` has). A
    default run (the instrumented module, in a worker thread) stops the guest at its next poll and
    exits 130, as Ctrl-C does on the interpreter."""
    import signal

    import wasmtime

    spin = tmp_path / "spin.wasm"
    spin.write_bytes(wasmtime.wat2wasm(f'(module {SAYS_GO} (memory (export "memory") 1) '
                                       '(func (export "_start") (call $go) loop br 0 end))'))
    def as_from_a_terminal() -> None:
        # a shell starts a foreground command with SIGINT at its default and unblocked; the test
        # process may have inherited it otherwise (a fresh-clone suite run once timed out here,
        # the child never seeing the signal, while the test passes alone)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([*wasmig_command("wasmtime"), *(["--plain"] if plain else []), str(spin)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=as_from_a_terminal)
    try:
        wait_for_go(proc)  # started, and spinning from the next instruction on
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == (-signal.SIGINT if plain else 130)


def test_the_instrumented_module_publishes_its_memory_size_for_other_threads() -> None:
    """After every memory.grow the instrumented module stores memory 0's size in the poll
    memory, so a migration's thread reads the live memory without calling into wasmtime."""
    import io

    from tests.wat import wat_module
    from wasmig.engines.wasmtime.checkpointable import Checkpointable
    from wasmig.wasi.preview1 import Wasi

    module = wat_module("""(module (memory (export "memory") 2)
      (func (export "_start") (drop (memory.grow (i32.const 3))) (drop (memory.grow (i32.const 0)))
        (i32.store (i32.const 327676) (i32.const 7))))""")
    wasi = Wasi(["m"], stdout=io.BytesIO(), stderr=io.BytesIO())
    try:
        runner = Checkpointable(module, wasi)
        address, size = runner.live_memory()
        assert size == 2 * 65536 and address
        runner.start()
        address2, size = runner.live_memory()
        assert (address2, size) == (address, 5 * 65536)  # grown, never moved
        assert runner.memory_pages(0) == 5
    finally:
        wasi.close()
