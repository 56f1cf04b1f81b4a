"""What every command says and how it ends: a line on stdout or stderr, and ``wasmig: error: ...``
with a non-zero exit code for anything the user must fix (never a Python traceback)."""

from __future__ import annotations

import sys

TRAP_EXIT_CODE = 134
ERROR_EXIT_CODE = 1
DIFF_DIFFERENT_EXIT_CODE = 1  # `wasmig diff`, as diff(1): the snapshots differ...
DIFF_TROUBLE_EXIT_CODE = 2  # ...or one could not be read


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 1."""


def out(line: str) -> None:
    """A line on stdout, written whole and flushed at once (it keeps its place among the guest's output)."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def err(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def fail(message: str, code: int = ERROR_EXIT_CODE) -> None:
    err(f"wasmig: error: {message}")
    sys.exit(code)


def about(path: str, e: Exception) -> str:
    """``path: message``, unless the message already names the path (store errors do)."""
    text = str(e)
    return text if path in text else f"{path}: {text}"
