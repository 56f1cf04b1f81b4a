"""A foreign-architecture Python 3.11 for the heterogeneity tests, with no internet but Debian's
package archive: Debian's s390x (big-endian) or arm64 packages, unpacked into a private root and
run by ``qemu-<arch>-static -L ROOT ROOT/usr/bin/python3.11`` (no binfmt, no chroot).

The packages are resolved and fetched by apt itself, with a private configuration: the foreign
architecture, an empty dpkg status (so every dependency is fetched) and private state, cache and
lists directories, so the host's apt setup is never touched. Each ``.deb`` is unpacked with
``dpkg-deb -x``. Roots are cached in ``~/.cache/wasmig/foreign/<arch>-<hash of the package list>``
(``WASMIG_FOREIGN_CACHE`` overrides) and reused; a root is complete once its ``.ready`` stamp
exists. qemu-user-static is installed with apt-get when missing (as root).

The foreign Python gets wasmig's own sources on ``PYTHONPATH`` and only the dependencies Debian
packages for that architecture: msgpack, zstandard, xxhash and cryptography (snapshots are
signed, docs/security.md) -- not blake3 (wasmig falls
back to its pure-Python BLAKE3), not wasmtime (the interpreter runs there), not rich.

    python -m tests.foreign.roots s390x -- -m wasmig run prog.wasm
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARCHES = {"s390x": "s390x", "arm64": "aarch64"}  # Debian architecture -> qemu's name
PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "python3-msgpack", "python3-zstandard", "python3-xxhash",
            "python3-cryptography")
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


class Unavailable(Exception):
    """The foreign root cannot be made here (no qemu, no Debian archive): tests skip, saying why."""


def cache_dir() -> Path:
    return Path(os.environ.get("WASMIG_FOREIGN_CACHE", Path.home() / ".cache" / "wasmig" / "foreign"))


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One builder (or qemu installer) at a time: test workers run in parallel."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{what} failed: {' / '.join(tail)}")


def qemu(arch: str) -> str:
    """The qemu-user binary for Debian architecture ``arch``, installed if need be."""
    name = f"qemu-{ARCHES[arch]}-static"
    found = shutil.which(name)
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        with _locked():
            if shutil.which(name) is None:
                try:
                    _run(["apt-get", "install", "-y", "-qq", "qemu-user-static"], "apt-get install qemu-user-static")
                except Unavailable:  # a fresh machine may have no package lists yet
                    _run(["apt-get", "update", "-qq"], "apt-get update")
                    _run(["apt-get", "install", "-y", "-qq", "qemu-user-static"], "apt-get install qemu-user-static")
        found = shutil.which(name)
    if found is None:
        raise Unavailable(f"{name} is not installed and cannot be (apt-get install qemu-user-static as root)")
    return found


def root(arch: str) -> Path:
    """The unpacked root of ``arch``'s Python and packages, made (once) if need be."""
    if arch not in ARCHES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHES)})")
    key = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:12]
    where = cache_dir() / f"{arch}-{key}"
    if (where / ".ready").exists():
        return where / "root"
    with _locked():
        if not (where / ".ready").exists():
            _build(arch, where)
    return where / "root"


def _build(arch: str, where: Path) -> None:
    if not SOURCES.exists() or shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise Unavailable("no apt-get/dpkg-deb or Debian sources on this host")
    shutil.rmtree(where, ignore_errors=True)
    apt = where / "apt"
    for d in ("state/lists/partial", "cache/archives/partial", "etc"):
        (apt / d).mkdir(parents=True)
    (apt / "status").touch()
    shutil.copy(SOURCES, apt / "etc" / SOURCES.name)
    options = [f"-oAPT::Architecture={arch}", f"-oAPT::Architectures::={arch}", f"-oDir::State={apt}/state",
               f"-oDir::State::status={apt}/status", f"-oDir::Cache={apt}/cache", "-oDir::Etc::SourceList=/dev/null",
               f"-oDir::Etc::SourceParts={apt}/etc", "-oDir::Etc::Preferences=/dev/null",
               "-oDir::Etc::PreferencesParts=/dev/null", "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root"]
    _run(["apt-get", *options, "update"], f"apt-get update ({arch})")
    _run(["apt-get", *options, "install", "--download-only", "-y", "--no-install-recommends", *PACKAGES],
         f"apt-get download of Python for {arch}")
    debs = sorted((apt / "cache" / "archives").glob("*.deb"))
    if not debs:
        raise Unavailable(f"apt fetched no packages for {arch}")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(where / "root")], f"dpkg-deb -x {deb.name}")
    shutil.rmtree(apt / "cache", ignore_errors=True)
    (where / ".ready").touch()


def python(arch: str) -> list[str]:
    """The command that runs ``arch``'s Python 3.11."""
    r = root(arch)
    return [qemu(arch), "-L", str(r), str(r / "usr" / "bin" / "python3.11")]


def environment() -> dict[str, str]:
    """For the foreign Python: wasmig's sources, nothing of the host's Python."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONNOUSERSITE"] = "1"
    return env


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ARCHES:
        print(f"usage: python -m tests.foreign.roots {{{','.join(ARCHES)}}} [-- PYTHON-ARGS...]", file=sys.stderr)
        return 2
    try:
        cmd = python(argv[0])
    except Unavailable as e:
        print(f"foreign-python: {e}", file=sys.stderr)
        return 1
    args = argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    return subprocess.call([*cmd, *args], env=environment())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
