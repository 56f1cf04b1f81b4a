"""Heterogeneity, proven: one run of a program moves x86-64 -> s390x (big-endian) -> aarch64 ->
x86-64, checkpointed at a random step on each, and ends with the output and files of an
uninterrupted native run, byte for byte.

The foreign legs run wasmig's interpreter on Debian's s390x and arm64 Python under qemu-user
(tests/foreign/roots.py), with only the dependencies Debian packages there (no blake3: the
pure-Python fallback hashes the snapshots). The native legs run on wasmtime when it is
installed. The tests skip, saying why, only if the foreign Python cannot be set up (no qemu, no
Debian archive). Each leg's time is printed (``pytest -s``).
"""

from __future__ import annotations

import filecmp
import io
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import wasmig
from tests.foreign import roots
from wasmig.session.command import instantiate_with_wasi
from wasmig.snapshot.store import load_snapshot
from wasmig.toolchain import compile_c
from wasmig.wasi.preview1 import ProcExit, Wasi

PROGRAMS = Path(__file__).parent / "programs"
#: (program, arguments, whether it works in a preopened directory, steps each foreign leg runs)
CASES = {
    "journal": (["/d", "60"], True, 1500),  # files kept open across every move: offsets travel
    "deeprec": (["2000"], False, 1500),  # recursion through function pointers, doubles per frame
    "floaty": (["24"], False, 1500),  # doubles, floats and libm, printed bit for bit
}


def native_engine() -> str:
    try:
        import wasmtime  # noqa: F401
    except ImportError:  # pragma: no cover
        return "interp"
    return "wasmtime"


@pytest.fixture(scope="module")
def foreign() -> dict[str, list[str]]:
    try:
        return {arch: roots.python(arch) for arch in ("s390x", "arm64")}
    except roots.Unavailable as e:
        pytest.skip(f"no foreign-architecture Python: {e}")


def total_steps(module: wasmig.Module, args: list[str], workdir: Path | None) -> int:
    wasi = Wasi(args, stdin=b"", stdout=io.BytesIO(), stderr=io.BytesIO(),
                preopens=[(str(workdir), "/d")] if workdir else ())
    inst = instantiate_with_wasi(module, wasi)
    try:
        inst.invoke("_start")
    except ProcExit:
        pass
    finally:
        wasi.close()
    return inst.machine.steps


def leg(cmd: list[str], what: str, env: dict[str, str] | None = None) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=env, timeout=900)
    took = time.perf_counter() - t0
    assert done.returncode == 0, f"{what}: exit {done.returncode}: {done.stderr.decode()[-2000:]}"
    return done.stdout, took


@pytest.mark.parametrize("name", list(CASES))
def test_x86_to_s390x_to_aarch64_and_back(tmp_path: Path, foreign: dict[str, list[str]], name: str) -> None:
    args, in_dir, per_leg = CASES[name]
    path = compile_c(PROGRAMS / f"{name}.c")
    module = wasmig.Module.from_file(path)
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref_dir.mkdir()
    run_dir.mkdir()
    total = total_steps(module, [name, *args], ref_dir if in_dir else None)
    rng = random.Random(f"{name}-{total}")
    k1 = rng.randrange(total // 5, total - 2 * per_leg - 1)
    k2, k3 = k1 + per_leg, k1 + 2 * per_leg
    assert k3 < total, (name, total)
    dirs = ["--dir", f"{run_dir}::/d"] if in_dir else []
    engine = native_engine()
    py = [sys.executable, "-m", "wasmig"]

    reference, _ = leg([*py, "run", "--engine", engine, *(["--dir", f"{ref_dir}::/d"] if in_dir else []),
                        str(path), *args], "the uninterrupted run")
    out = b""
    times = {}
    ck = [tmp_path / f"ck{i}" for i in range(4)]
    part, times["x86-64"] = leg([*py, "run", "--engine", engine, *dirs, "--checkpoint-dir", str(ck[1]),
                                 "--checkpoint-at-step", str(k1), "--checkpoint-then", "exit", str(path), *args],
                                "x86-64 to the first checkpoint")
    out += part
    env = roots.environment()
    for arch, src, dst, at in (("s390x", ck[1], ck[2], k2), ("arm64", ck[2], ck[3], k3)):
        part, times[arch] = leg([*foreign[arch], "-m", "wasmig", "restore", "--engine", "interp", "--module",
                                 str(path), *dirs, "--checkpoint-dir", str(dst), "--checkpoint-at-step", str(at),
                                 "--checkpoint-then", "exit", str(src)], f"the {arch} leg", env)
        out += part
    part, times["x86-64 again"] = leg([*py, "restore", "--engine", engine, "--module", str(path), *dirs,
                                       str(ck[3])], "x86-64 to the end")
    out += part
    print(f"\n{name}: steps {k1} / {k2} / {k3} of {total}; " + ", ".join(f"{a} {t:.1f} s" for a, t in times.items()))
    assert out == reference
    snaps = [load_snapshot(c) for c in ck[1:]]
    assert [s.steps for s in snaps] == [k1, k2, k3]
    assert [s.engine for s in snaps] == [engine, "interp", "interp"]
    if in_dir:
        names = sorted(p.name for p in ref_dir.iterdir())
        assert names == sorted(p.name for p in run_dir.iterdir())
        match, mismatch, errors = filecmp.cmpfiles(ref_dir, run_dir, names, shallow=False)
        assert (mismatch, errors) == ([], []), (mismatch, errors)
