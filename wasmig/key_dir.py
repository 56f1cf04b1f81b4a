"""Where the user's key pair lives, without the ``cryptography`` package (:mod:`wasmig.keys` loads it).

Apart from :mod:`wasmig.keys` because a ``wasmig run --checkpoint-dir`` start only asks whether a
key is there (to make and announce one before the program's output when it is not); loading it,
and the 20-40 ms of imports that takes, waits until the run is under way (docs/design.md, "Start-up").
"""

from __future__ import annotations

import os
from pathlib import Path

KEY_ENV = "WASMIG_KEY_DIR"
PRIVATE_NAME = "wasmig.key"
PUBLIC_NAME = "wasmig.pub"


def default_key_dir() -> Path:
    """``$WASMIG_KEY_DIR``, else ``$XDG_CONFIG_HOME/wasmig``, else ``~/.config/wasmig``: the user's own
    key pair, the one `restore`, `serve` and `inspect --verify` trust by default."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "wasmig"


def own_key_present() -> bool:
    """Whether the user's private key file is there (not whether it is usable: loading says that)."""
    return (default_key_dir() / PRIVATE_NAME).exists()
