"""Hand-written test modules: WebAssembly text assembled by wabt's ``wat2wasm`` (``make test``
installs wabt; without it the calling test is skipped)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

import wasmig


def wat_module(text: str) -> wasmig.Module:
    """``text`` assembled with its names kept, as a module."""
    if shutil.which("wat2wasm") is None:
        pytest.skip("wat2wasm missing")
    data = subprocess.run(["wat2wasm", "--debug-names", "-", "-o", "/dev/stdout"], input=text.encode(),
                          capture_output=True, check=True).stdout
    return wasmig.Module.from_bytes(data)


def threads_module(text: str) -> wasmig.Module:
    """``text`` (using the threads proposal: shared memories, atomics) assembled, as a module
    decoded with the ``threads`` feature."""
    if shutil.which("wat2wasm") is None:
        pytest.skip("wat2wasm missing")
    data = subprocess.run(["wat2wasm", "--enable-threads", "-", "-o", "/dev/stdout"], input=text.encode(),
                          capture_output=True, check=True).stdout
    return wasmig.Module.from_bytes(data, features={"threads"})
