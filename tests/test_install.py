"""What a user who runs ``pip install wasmig`` gets: the compiled engine where wasmtime has wheels,
the interpreter with one note where it has none.

The install is a real ``pip install .`` (not editable, no dev extras) into an empty venv. Its versions
are held to requirements.lock's (as pip constraints, the hashes stripped: pip takes none there), so a
new release on PyPI cannot change what this test sees; which packages come in is pip's own reading of
pyproject.toml, environment markers included.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.wasi_harness import REPO, program

pytestmark = pytest.mark.slow


def _constraints(tmp: Path) -> Path:
    """requirements.lock as a constraints file: one ``name==version ; marker`` line per package."""
    lines = [line.rstrip(" \\") for line in (REPO / "requirements.lock").read_text().splitlines()
             if line and not line.startswith((" ", "#"))]
    out = tmp / "constraints.txt"
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``pip install .`` of this checkout: its bin directory."""
    tmp = tmp_path_factory.mktemp("pip-install")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "-c", str(_constraints(tmp)), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bin_dir


def _pip_list(bin_dir: Path) -> set[str]:
    out = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                         text=True, check=True).stdout
    return {line.split("==")[0].lower() for line in out.splitlines()}


def test_pip_install_brings_wasmtime_and_runs_on_it(installed: Path, tmp_path: Path) -> None:
    assert {"wasmtime", "msgpack", "zstandard", "blake3", "xxhash", "rich"} <= _pip_list(installed)
    assert not {"pytest", "ziglang", "ruff"} & _pip_list(installed), "dev tools leaked into a plain install"
    version = subprocess.run([str(installed / "wasmig"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert "wasmtime" in version.stdout and "compiled (default)" in version.stdout, version.stdout
    # 100 million iterations: well under a second compiled, hours on the interpreter
    spin = program("spin")
    run = subprocess.run([str(installed / "wasmig"), "run", str(spin), "10", "10000000"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("spinning 10 x 10000000\n"), run.stdout
    assert "interpreter" not in run.stderr, run.stderr


def test_without_wasmtime_the_interpreter_runs_and_says_so_once(installed: Path, tmp_path: Path) -> None:
    """A shadow ``wasmtime`` package without the native library (what wasmtime-py's ``any`` wheel
    installs) first on the path: the default engine falls back, with one note on stderr."""
    shadow = tmp_path / "shadow" / "wasmtime"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise RuntimeError('no native library')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}
    version = subprocess.run([str(installed / "wasmig"), "--version"], capture_output=True, text=True, env=env,
                             timeout=60)
    assert "interp: wasmig's interpreter (default)" in version.stdout, version.stdout
    assert "wasmtime: not available: the installed wasmtime package has no native library" in version.stdout
    run = subprocess.run([str(installed / "wasmig"), "run", str(program("hello"))], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("wasmig: note: running on wasmig's interpreter") == 1, run.stderr
    explicit = subprocess.run([str(installed / "wasmig"), "run", "--engine", "wasmtime", str(program("hello"))],
                              capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert explicit.returncode != 0 and "--engine wasmtime is not available" in explicit.stderr, explicit.stderr
    assert "Traceback" not in explicit.stderr
