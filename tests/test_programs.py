"""Real C programs, compiled with zig to wasm32-wasi, run on wasmig's interpreter with wasmig's
WASI preview1 and compared with the same module on wasmtime (the reference, via its own WASI).

Why C programs: they execute what compilers actually emit (wasi-libc's printf, qsort, malloc,
bulk memory, call_indirect, i64 and f64 arithmetic), which hand-written tests never cover as
densely. Why wasmtime as the oracle: the expected output then never has to be written down by
hand, and any divergence is an interpreter (or WASI) bug.

Also here: the toolchain's cache and error behaviour, WASI error paths as seen from wasm (bad
pointers, bad descriptors, link errors), and the guarantee that deep wasm recursion is not Python
recursion.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

import wasmig
from wasmig import toolchain
from wasmig.session.command import instantiate_with_wasi, run_command
from wasmig.toolchain import ToolchainError, compile_c, strip_debug_sections
from wasmig.wasi.errno import Errno
from wasmig.wasi.preview1 import ProcExit, Wasi

PROGRAMS = Path(__file__).resolve().parent / "programs"

needs_zig = pytest.mark.skipif(
    importlib.util.find_spec("ziglang") is None and not os.environ.get(toolchain.ZIG_ENV),
    reason="ziglang is not installed (pip install ziglang)",
)
WAT2WASM = shutil.which("wat2wasm") or ("/usr/bin/wat2wasm" if Path("/usr/bin/wat2wasm").exists() else None)
needs_wat2wasm = pytest.mark.skipif(WAT2WASM is None, reason="wat2wasm (wabt) is not installed")


def wat(text: str, tmp_path: Path) -> bytes:
    src = tmp_path / "m.wat"
    src.write_text(text)
    assert WAT2WASM is not None
    return subprocess.run([WAT2WASM, str(src), "--output=-"], capture_output=True, check=True).stdout


def run(
    program: Path | wasmig.Module,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes = b"",
) -> tuple[int, bytes, bytes]:
    """``(exit_code, stdout, stderr)`` of a WASI command on wasmig's interpreter, stdio captured.

    ``args`` defaults to just the program's file name."""
    module = program if isinstance(program, wasmig.Module) else wasmig.Module.from_file(program)
    if args is None:
        args = [program.name if isinstance(program, Path) else "main"]
    out, err = io.BytesIO(), io.BytesIO()
    wasi = Wasi(args, env, stdin=stdin, stdout=out, stderr=err)
    try:
        code = run_command(module, wasi, engine="interp")
    finally:
        wasi.close()
    return code, out.getvalue(), err.getvalue()


def run_wasmtime(path: Path, args: list[str], env: dict[str, str], stdin: bytes, tmp: Path) -> tuple[int, bytes, bytes]:
    """The reference: wasmtime's own WASI, stdio through files."""
    wasmtime = pytest.importorskip("wasmtime")
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    cfg = wasmtime.WasiConfig()
    cfg.argv = args
    cfg.env = list(env.items())
    (tmp / "stdin").write_bytes(stdin)
    cfg.stdin_file = str(tmp / "stdin")
    cfg.stdout_file = str(tmp / "stdout")
    cfg.stderr_file = str(tmp / "stderr")
    store.set_wasi(cfg)
    inst = linker.instantiate(store, wasmtime.Module.from_file(engine, str(path)))
    code = 0
    try:
        inst.exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:
        code = exc.code
    return code, (tmp / "stdout").read_bytes(), (tmp / "stderr").read_bytes()


# --- programs vs wasmtime ----------------------------------------------------------------------
CASES = [
    ("checksum", ["checksum"], {}, b""),
    ("hello", ["hello"], {}, b""),
    (
        "hello",
        ["hello", "one", "two words", "ünïcödé", ""],
        {"WASMIG_GREETING": "hi there", "OTHER": "x=y"},
        b"first line\nsecond line\n" * 300 + b"no newline at end",
    ),
    ("exitcode", ["exitcode"], {}, b""),
    ("exitcode", ["exitcode", "3"], {}, b""),
    ("exitcode", ["exitcode", "125"], {}, b""),
    ("exitcode", ["exitcode", "7", "exit"], {}, b""),
    ("exitcode", ["exitcode", "0", "exit"], {}, b""),
]


@needs_zig
@pytest.mark.parametrize(
    ("program", "args", "env", "stdin"), CASES, ids=[f"{c[0]}-{'-'.join(c[1][1:]) or 'noargs'}" for c in CASES]
)
def test_program_matches_wasmtime(
    program: str, args: list[str], env: dict[str, str], stdin: bytes, tmp_path: Path
) -> None:
    path = compile_c(PROGRAMS / f"{program}.c")
    expected = run_wasmtime(path, args, env, stdin, tmp_path)
    got = run(path, args, env, stdin)
    assert got == expected


@needs_zig
def test_checksum_output_is_complete() -> None:
    """Guards the oracle itself: the program really ran to the end on both engines."""
    code, out, err = run(compile_c(PROGRAMS / "checksum.c"))
    assert code == 0 and err == b""
    lines = out.decode().splitlines()
    assert [line.split()[0] for line in lines] == ["hash", "sort", "matrix", "fib", "mix", "i64", "checksum"]
    assert "fib    6765" in lines and "sorted=1" in lines[1]


@needs_zig
def test_run_command_counts_calls() -> None:
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "hello.c"))
    out = io.BytesIO()
    wasi = Wasi(["hello", "x"], {"WASMIG_GREETING": "g"}, stdin=b"", stdout=out, stderr=io.BytesIO())
    code = run_command(module, wasi)
    assert code == 0 and b"argv[1]=x" in out.getvalue() and b"WASMIG_GREETING=g" in out.getvalue()
    assert wasi.calls["args_get"] == 1 and wasi.calls["fd_write"] >= 1


# --- toolchain ---------------------------------------------------------------------------------
@needs_zig
def test_compile_is_cached_and_keyed_by_flags(tmp_path: Path) -> None:
    src = tmp_path / "prog.c"
    src.write_text("int main(void) { return 0; }\n")
    a = compile_c(src, cache_dir=tmp_path / "cache")
    mtime = a.stat().st_mtime_ns
    assert compile_c(src, cache_dir=tmp_path / "cache") == a and a.stat().st_mtime_ns == mtime
    b = compile_c(src, opt="-O1", cache_dir=tmp_path / "cache")
    c = compile_c(src, extra_flags=["-DX=1"], cache_dir=tmp_path / "cache")
    assert len({a, b, c}) == 3
    src.write_text("int main(void) { return 1; }\n")
    assert compile_c(src, cache_dir=tmp_path / "cache") != a
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary files left behind


@needs_zig
def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(toolchain.CACHE_ENV, str(tmp_path / "envcache"))
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    assert compile_c(src).parent == tmp_path / "envcache"


@needs_zig
def test_concurrent_compiles_of_the_same_program(tmp_path: Path) -> None:
    src = tmp_path / "same.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("same"); return 0; }\n')
    results: list[Path | BaseException] = []

    def worker() -> None:
        try:
            results.append(compile_c(src, cache_dir=tmp_path / "cache"))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and isinstance(results[0], Path), results
    assert run(results[0])[1] == b"same\n"


@needs_zig
def test_compile_error_reports_compiler_output(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int main(void) { return undefined_thing; }\n")
    with pytest.raises(ToolchainError) as info:
        compile_c(src, cache_dir=tmp_path / "cache")
    assert "undefined_thing" in str(info.value) and "undefined_thing" in info.value.stderr
    assert not list((tmp_path / "cache").glob("*"))


def test_missing_ziglang_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(toolchain.ZIG_ENV, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ziglang" else real(name, *a))
    src = tmp_path / "p.c"
    src.write_text("int main(void) { return 0; }\n")
    with pytest.raises(ToolchainError, match="pip install ziglang"):
        compile_c(src, cache_dir=tmp_path / "cache")


@needs_zig
def test_library_builds_export_functions(tmp_path: Path) -> None:
    src = tmp_path / "lib.c"
    src.write_text("int square(int x) { return x * x; }\nint twice(int x) { return 2 * x; }\n")
    bare_path = toolchain.compile_c_library(src, ["square", "twice"], libc=False, cache_dir=tmp_path)
    bare = wasmig.Module.from_file(bare_path)
    assert not bare.ir.imports
    inst = wasmig.Instance(bare, imports={})
    assert inst.exports["square"](-12) == 144 and inst.exports["twice"](21) == 42
    reactor = wasmig.Module.from_file(toolchain.compile_c_library(src, ["square"], cache_dir=tmp_path))
    inst = instantiate_with_wasi(reactor, Wasi())
    inst.exports["_initialize"]()
    assert inst.exports["square"](9) == 81


@needs_zig
def test_debug_sections_are_stripped_but_names_kept() -> None:
    module = wasmig.Module.from_file(compile_c(PROGRAMS / "checksum.c"))
    assert not any(c.name.startswith(".debug") for c in module.ir.customs)
    assert module.ir.names is not None and module.ir.names.module == "checksum.wasm"
    assert {"_start", "fib", "cmp_u32"} <= set(module.ir.names.functions.values())


def test_strip_debug_sections_unit() -> None:
    def custom(name: bytes, payload: bytes) -> bytes:
        body = bytes([len(name)]) + name + payload
        return bytes([0, len(body)]) + body

    header = b"\0asm\x01\0\0\0"
    type_section = bytes([1, 1, 0])  # a type section with zero entries
    wasm = header + custom(b".debug_info", b"xx") + type_section + custom(b"name", b"") + custom(b".debug_line", b"")
    assert strip_debug_sections(wasm) == header + type_section + custom(b"name", b"")


# --- WASI error paths, seen from wasm ----------------------------------------------------------
WASI_PROBE = """
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_seek" (func $seek (param i32 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_raise" (func $raise (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "\\20\\00\\00\\00\\05\\00\\00\\00")  ;; an iovec {buf=32, len=5} at 16
  (func (export "open") (result i32)
    (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                     (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 0)))
  (func (export "write") (param $fd i32) (param $iovs i32) (result i32)
    (call $fd_write (local.get $fd) (local.get $iovs) (i32.const 1) (i32.const 8)))
  (func (export "clock") (param $id i32) (result i32)
    (call $clock (local.get $id) (i64.const 1) (i32.const 0)))
  (func (export "random") (param $ptr i32) (param $len i32) (result i32)
    (call $random (local.get $ptr) (local.get $len)))
  (func (export "seek") (param $fd i32) (result i32)
    (call $seek (local.get $fd) (i64.const 0) (i32.const 0) (i32.const 0)))
  (func (export "prestat") (result i32) (call $prestat (i32.const 3) (i32.const 0)))
  (func (export "raise") (param i32) (result i32) (call $raise (local.get 0)))
  (func (export "exit") (param i32) (call $exit (local.get 0)))
)
"""


@needs_wat2wasm
def test_wasi_error_paths(tmp_path: Path) -> None:
    module = wasmig.Module.from_bytes(wat(WASI_PROBE, tmp_path))
    out = io.BytesIO()
    wasi = Wasi(stdout=out, stderr=io.BytesIO())
    inst = instantiate_with_wasi(module, wasi)
    ex = inst.exports
    mem = ex["memory"]
    mem.write(32, b"hello")
    assert ex["open"]() == Errno.BADF  # no preopens: fd 3 is not open
    assert ex["write"](1, 16) == Errno.SUCCESS and out.getvalue() == b"hello"
    assert int.from_bytes(mem.read(8, 4), "little") == 5
    assert ex["write"](5, 16) == Errno.BADF
    mem.write(40, (65534).to_bytes(4, "little") + (10).to_bytes(4, "little"))  # iovec past the end
    assert ex["write"](1, 40) == Errno.FAULT
    assert ex["write"](1, 65535 * 1) == Errno.FAULT  # the iovec array itself is out of bounds
    assert out.getvalue() == b"hello"  # nothing of the failed writes got through
    assert ex["clock"](1) == Errno.SUCCESS and int.from_bytes(mem.read(0, 8), "little") > 0
    assert ex["clock"](99) == Errno.INVAL
    assert ex["random"](100, 64) == Errno.SUCCESS and mem.read(100, 64) != bytes(64)
    assert ex["random"](65530, 64) == Errno.FAULT
    assert mem.read(65530, 6) == bytes(6)  # no partial write on EFAULT
    assert ex["seek"](1) == Errno.SPIPE and ex["seek"](9) == Errno.BADF
    assert ex["prestat"]() == Errno.BADF
    assert ex["raise"](6) == Errno.NOSYS
    with pytest.raises(ProcExit) as info:
        ex["exit"](17)
    assert info.value.code == 17 and wasi.exit_code == 17
    assert wasi.calls["path_open"] == 1 and wasi.calls["fd_write"] == 4 and wasi.calls["proc_raise"] == 1


@needs_wat2wasm
def test_wrong_signature_for_a_wasi_call_is_a_link_error(tmp_path: Path) -> None:
    module = wasmig.Module.from_bytes(
        wat('(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32))))', tmp_path)
    )
    with pytest.raises(wasmig.LinkError, match="fd_write"):
        instantiate_with_wasi(module, Wasi())


@needs_wat2wasm
def test_import_that_is_not_a_wasi_call_is_a_link_error(tmp_path: Path) -> None:
    module = wasmig.Module.from_bytes(
        wat('(module (import "wasi_snapshot_preview1" "not_a_real_call" (func (param f64) (result i64 f32))))',
            tmp_path)
    )
    with pytest.raises(wasmig.LinkError, match="not_a_real_call"):
        instantiate_with_wasi(module, Wasi())


# --- deep recursion is not Python recursion ----------------------------------------------------
RECURSION = """
(module
  (func $down (export "down") (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 0))
      (else (i32.add (call $down (i32.sub (local.get $n) (i32.const 1))) (i32.const 1)))))
  (func $forever (export "forever") (param $n i32) (result i32)
    (call $forever (i32.add (local.get $n) (i32.const 1))))
)
"""


@needs_wat2wasm
def test_deep_recursion_completes(tmp_path: Path) -> None:
    inst = wasmig.Instance(wasmig.Module.from_bytes(wat(RECURSION, tmp_path)), imports={})
    assert inst.exports["down"](100_000) == 100_000


@needs_wat2wasm
def test_infinite_recursion_is_exhaustion_not_recursion_error(tmp_path: Path) -> None:
    inst = wasmig.Instance(wasmig.Module.from_bytes(wat(RECURSION, tmp_path)), imports={})
    with pytest.raises(wasmig.Exhaustion) as info:
        inst.exports["forever"](0)
    assert isinstance(info.value, wasmig.Trap) and not isinstance(info.value, RecursionError)
    assert inst.exports["down"](10) == 10  # the instance is still usable after the trap
