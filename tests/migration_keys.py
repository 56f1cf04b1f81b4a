"""Key pairs for the tests that start daemons, gateways and migrating runs (the ``keys`` fixture
of conftest.py): one per role, so that every test exercises the pinned, mutually authenticated
TLS of docs/security.md rather than a shortcut."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wasmig.keys import KeyPair, load_public_key, write_key_pair

#: every key of these tests: the source's (the user's: WASMIG_KEY_DIR), the gateway's, the daemons'
KEY_NAMES = ("source", "gateway", "target", "a", "b", "plain", "mapped")


@dataclass
class Keys:
    """A key pair per role, in directories under ``root``; daemons trust the source and each other."""

    root: Path

    def dir(self, name: str) -> Path:
        return self.root / name

    def pub(self, name: str) -> str:
        return str(self.root / name / "wasmig.pub")

    def fingerprint(self, name: str) -> str:
        return load_public_key(self.root / name).fingerprint


def trust_all(keys: Keys) -> list[str]:
    return [arg for name in KEY_NAMES if name != "gateway" for arg in ("--trust-peer", keys.pub(name))]


def make_keys(root: Path) -> Keys:
    k = Keys(root)
    for name in KEY_NAMES:
        write_key_pair(KeyPair.generate(name), k.dir(name))
    return k
