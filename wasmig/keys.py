"""Ed25519 key pairs: who made a snapshot, and who a daemon, a gateway or a migration source is.

One key pair per user (or per daemon) serves both jobs of issue 17: it signs snapshot manifests,
and its public key is the identity a TLS peer pins (a self-signed certificate made from the same
key). A peer is named by the *fingerprint* of its public key, ``sha256:<64 hex digits>`` of the 32
raw key bytes — short enough to paste into a command line or a trust file, and independent of any
certificate's other fields.

Files (the default directory is :func:`default_key_dir`, created 0700):

- ``wasmig.key``: the private key, PKCS#8 PEM, mode 0600, never world- or group-readable;
- ``wasmig.pub``: the public key, one line ``wasmig-ed25519 <base64 of the 32 bytes> [comment]``,
  the form handed to other users and machines (``--trust FILE``, ``--peer-fingerprint``).

The cryptography is the ``cryptography`` package's; nothing here is home-made but the file
layout. A key file that is not ours (wrong mode, wrong owner, malformed) is a one-line
:class:`KeyFileError`, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from wasmig.errors import WasmError
from wasmig.key_dir import KEY_ENV, PRIVATE_NAME, PUBLIC_NAME, default_key_dir  # noqa: F401  (this module's names too)

PUBLIC_TAG = "wasmig-ed25519"
# A public key file is one short line; anything much longer is not one (and is not read whole).
MAX_KEY_FILE = 16 * 1024


class KeyFileError(WasmError):
    """A key or public-key file that is missing, malformed, or not private enough to trust."""


def fingerprint_of(raw: bytes) -> str:
    """``sha256:<hex>`` of a raw 32-byte Ed25519 public key."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """A peer's or a signer's public key: 32 raw bytes, compared and printed by fingerprint."""

    raw: bytes
    comment: str = ""

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError(f"an Ed25519 public key is 32 bytes, not {len(self.raw)}")

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``data``; never raises on a bad one."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_line(self) -> str:
        """The ``wasmig.pub`` line: tag, base64 key, optional comment."""
        text = f"{PUBLIC_TAG} {base64.b64encode(self.raw).decode()}"
        return f"{text} {self.comment}" if self.comment else text

    @classmethod
    def from_line(cls, line: str) -> PublicKey:
        """Parse a ``wasmig.pub`` line (the inverse of :meth:`to_line`)."""
        parts = line.strip().split(maxsplit=2)
        if len(parts) < 2 or parts[0] != PUBLIC_TAG:
            raise KeyFileError(f"not a wasmig public key line (expected '{PUBLIC_TAG} <base64> [comment]')")
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError("a wasmig public key line holds malformed base64") from None
        return cls(raw, parts[2] if len(parts) > 2 else "")


@dataclass(frozen=True)
class KeyPair:
    """A private Ed25519 key and its public half."""

    private: Ed25519PrivateKey
    public: PublicKey

    @classmethod
    def generate(cls, comment: str = "") -> KeyPair:
        private = Ed25519PrivateKey.generate()
        return cls(private, PublicKey(_raw_public(private), comment))

    @property
    def fingerprint(self) -> str:
        return self.public.fingerprint

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``data``."""
        return self.private.sign(data)

    def private_pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte (never a window where it is readable by
    others), refusing to overwrite; fsync it: a key is not a cache."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        os.fsync(fd)
    except BaseException:  # a full disk: no empty or cut key left to be refused as malformed, or kept
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_key_pair(pair: KeyPair, directory: Path | None = None, *, force: bool = False) -> Path:
    """Store ``pair`` as ``wasmig.key`` (0600) and ``wasmig.pub`` in ``directory`` (made 0700) and return
    the directory. An existing key is kept unless ``force``: overwriting one silently would orphan every
    snapshot it signed and every peer that pinned it."""
    directory = directory if directory is not None else default_key_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    private_path, public_path = directory / PRIVATE_NAME, directory / PUBLIC_NAME
    if private_path.exists() and not force:
        raise KeyFileError(f"{private_path} exists already (use --force to replace it)")
    for path in (private_path, public_path):
        path.unlink(missing_ok=True)
    _write_private_file(private_path, pair.private_pem())
    try:
        _write_private_file(public_path, (pair.public.to_line() + "\n").encode())
    except BaseException:  # both halves or neither: a lone private key would block the next keygen
        private_path.unlink(missing_ok=True)
        raise
    os.chmod(public_path, 0o644)  # the public half is meant to be handed out
    return directory


def _read_small(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{what} {path} is not a regular file")
            if info.st_size > MAX_KEY_FILE:
                raise KeyFileError(f"{what} {path} is {info.st_size} bytes: not a key file")
            return f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"no {what} at {path}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{what} {path} is a directory") from None
    except PermissionError:
        raise KeyFileError(f"cannot read {what} {path}: permission denied") from None
    except OSError as e:  # a name over NAME_MAX, a file where a directory is on the path, an I/O error
        raise KeyFileError(f"cannot read {what} {path}: {e.strerror or e}") from None


def load_key_pair(location: Path | None = None) -> KeyPair:
    """The key pair in ``location`` (a directory holding ``wasmig.key``, or the key file itself;
    default :func:`default_key_dir`). Refuses a private key readable by group or others, or owned by
    another user: such a key may be known to someone else."""
    location = location if location is not None else default_key_dir()
    path = location / PRIVATE_NAME if os.path.isdir(location) else location  # False for any OSError
    data = _read_small(path, "private key")
    info = path.stat()
    if info.st_mode & 0o077:
        raise KeyFileError(f"private key {path} is readable by others (mode {info.st_mode & 0o777:o}): chmod 600 it")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise KeyFileError(f"private key {path} belongs to another user (uid {info.st_uid})")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    comment = ""
    public_path = path.with_name(PUBLIC_NAME)
    if os.path.isfile(public_path):
        try:
            comment = load_public_key(public_path).comment
        except KeyFileError:
            comment = ""
    return KeyPair(private, PublicKey(_raw_public(private), comment))


def load_public_key(path: Path) -> PublicKey:
    """A public key from a ``wasmig.pub`` file (or a directory holding one). A private key file is
    refused here: trust lists hold public keys only."""
    if os.path.isdir(path):  # not Path.is_dir: it raises for a name over NAME_MAX
        path = path / PUBLIC_NAME
    data = _read_small(path, "public key")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a wasmig public key file") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise KeyFileError(f"{path} should hold exactly one '{PUBLIC_TAG}' line")
    try:
        return PublicKey.from_line(lines[0])
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def parse_fingerprint(text: str) -> str:
    """Normalise a fingerprint given on a command line (``sha256:<64 hex>``, case-insensitive)."""
    value = text.strip().lower()
    digest = value.removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise KeyFileError(f"not a key fingerprint: {text!r} (expected sha256:<64 hex digits>)")
    return "sha256:" + digest
