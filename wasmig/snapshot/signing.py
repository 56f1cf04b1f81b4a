"""Who made a snapshot: Ed25519 signatures on snapshot files, and the trust check before a restore.

A snapshot file ends with the BLAKE3 checksum of its header and manifest (docs/snapshot-format.md).
A checksum only catches accidents: whoever edits a manifest can recompute it. So every snapshot
file wasmig writes carries, after the checksum, a *seal*: the signer's public key and its Ed25519
signature of the checksum (with a domain prefix). The manifest names every page by its BLAKE3 hash
(each page is checked against it when read) and the module by its sha256, so the one signature
covers all of a snapshot's content: the frames, the WASI state (paths, sockets), every page and the
module.

The signing key is the user's own (:mod:`wasmig.keys`, ``wasmig keygen``). So that honest use needs
no set-up step, the first snapshot written without a key creates one in the default key directory
and says so on stderr; a key that cannot be created leaves snapshots unsigned, with a warning.

Reading: :func:`check_trust` accepts a snapshot only when it is sealed by a trusted key (the user's
own by default, plus ``--trust FILE``), unless ``--allow-unsigned`` (then with a warning). Whether it
is sealed by the user's *own* key matters beyond trust: only then may a restore reuse the host
directories and sockets the snapshot records (:mod:`wasmig.grants`).
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wasmig.errors import SnapshotError
from wasmig.keys import (
    KeyFileError,
    KeyPair,
    PublicKey,
    default_key_dir,
    load_key_pair,
    load_public_key,
    write_key_pair,
)

SEAL_MAGIC = b"WASMIGSIG1"
#: after a snapshot file's checksum: magic, the signer's raw Ed25519 public key, the signature
SEAL = struct.Struct("<10s32s64s")
SEAL_SIZE = SEAL.size
#: what is signed is this prefix and the 32-byte checksum, so a snapshot signature can never be
#: replayed as (or made from) a signature of anything else the same key signs (a TLS handshake)
DOMAIN = b"wasmig snapshot seal v1\0"


@dataclass(frozen=True)
class Seal:
    """A snapshot file's signature: by whom, of which checksum."""

    signer: PublicKey
    signature: bytes
    checksum: bytes

    def valid(self) -> bool:
        return self.signer.verify(self.signature, DOMAIN + self.checksum)

    @classmethod
    def parse(cls, data: bytes, checksum: bytes) -> Seal:
        magic, raw, signature = SEAL.unpack(data)
        if magic != SEAL_MAGIC:
            raise SnapshotError("snapshot has trailing data that is not a signature")
        return cls(PublicKey(raw), signature, checksum)


# --- signing ------------------------------------------------------------------------------------------
_lock = threading.Lock()
_signer_cache: dict[Path, KeyPair | None] = {}
#: Directories whose key is unusable or could not be made: said once per process, not at every checkpoint
_given_up: set[Path] = set()


def own_key_pair(create: bool = True) -> KeyPair | None:
    """The user's key pair from :func:`wasmig.keys.default_key_dir` (read once per process and
    directory: a checkpoint must not parse PEM each time). With ``create``, a missing one is made,
    announced on stderr; None when there is none and it cannot be made."""
    directory = default_key_dir()
    with _lock:
        if directory in _signer_cache and (_signer_cache[directory] is not None or not create
                                           or directory in _given_up):
            return _signer_cache[directory]
        pair = _load_or_create(directory, create)
        _signer_cache[directory] = pair
        return pair


def _load_or_create(directory: Path, create: bool) -> KeyPair | None:
    try:
        return load_key_pair(directory)
    except KeyFileError as e:
        if not (directory / "wasmig.key").exists():
            if not create:
                return None
        else:  # a key that is there but unusable is the user's to fix, not to replace
            _given_up.add(directory)
            _warn(f"snapshots are written unsigned: {e}")
            return None
    try:
        pair = KeyPair.generate(comment="wasmig snapshot key")
        write_key_pair(pair, directory)
    except (KeyFileError, OSError) as e:
        try:  # a concurrent writer made it first
            return load_key_pair(directory)
        except KeyFileError:
            _given_up.add(directory)
            _warn(f"snapshots are written unsigned: cannot create a signing key in {directory}: "
                  f"{e.strerror if isinstance(e, OSError) and e.strerror else e}")
            return None
    _warn(f"note: created your snapshot signing key {directory / 'wasmig.key'} (public key "
          f"{directory / 'wasmig.pub'}, {pair.fingerprint}); see docs/security.md", prefix="wasmig: ")
    return pair


def _warn(text: str, prefix: str = "wasmig: warning: ") -> None:
    sys.stderr.write(f"{prefix}{text}\n")
    sys.stderr.flush()


def seal_for(checksum: bytes) -> bytes:
    """The seal to append after a snapshot file's ``checksum``: empty when there is no key."""
    pair = own_key_pair()
    if pair is None:
        return b""
    return SEAL.pack(SEAL_MAGIC, pair.public.raw, pair.sign(DOMAIN + checksum))


def forget_cached_keys() -> None:
    """Read the key directory afresh (after ``wasmig keygen --force``, or in tests)."""
    with _lock:
        _signer_cache.clear()
        _given_up.clear()


# --- trust --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trust:
    """Which signers a command accepts: the user's own key and those given with ``--trust``."""

    own: PublicKey | None
    others: tuple[PublicKey, ...] = ()
    allow_unsigned: bool = False

    @classmethod
    def from_options(cls, trust_files: Sequence[str], allow_unsigned: bool) -> Trust:
        """``--trust FILE...`` and ``--allow-unsigned``; raises KeyFileError (one line) for a bad file."""
        pair = own_key_pair(create=False)
        others = tuple(load_public_key(Path(f)) for f in trust_files)
        return cls(pair.public if pair is not None else None, others, allow_unsigned)

    def trusted(self, key: PublicKey) -> bool:
        return any(k.raw == key.raw for k in (self.own, *self.others) if k is not None)

    def is_own(self, key: PublicKey) -> bool:
        return self.own is not None and self.own.raw == key.raw


@dataclass(frozen=True)
class Verdict:
    """What :func:`check_trust` found: the signer's fingerprint (None: unsigned or not verified)
    and whether it is the restoring user's own key (the one case a snapshot's recorded host
    resources may be reused)."""

    signer: str | None
    own: bool
    note: str


def describe(seal: Seal | None, trust: Trust | None = None) -> str:
    """One phrase for ``inspect``: signed by whom, valid or not, trusted or not."""
    if seal is None:
        return "not signed"
    if not seal.valid():
        return f"signature by {seal.signer.fingerprint} DOES NOT VERIFY (changed after it was signed)"
    if trust is None:
        return f"signed by {seal.signer.fingerprint}"
    who = "your own key" if trust.is_own(seal.signer) else "a trusted key" if trust.trusted(seal.signer) \
        else "a key you do not trust"
    return f"signed by {seal.signer.fingerprint} ({who})"


def check_trust(where: str, seal: Seal | None, trust: Trust, api: bool = False) -> Verdict:
    """Accept a snapshot sealed by a trusted key; otherwise refuse with a one-line SnapshotError,
    or with ``allow_unsigned`` accept it with a warning (and as no one's: never ``own``).
    ``api``: the messages name :func:`wasmig.restore`'s keywords instead of the command line's options."""
    trust_option, unsigned_option = ("trust=[FILE]", "allow_unsigned=True") if api else \
        ("--trust FILE", "--allow-unsigned")
    if seal is not None and seal.valid() and trust.trusted(seal.signer):
        own = trust.is_own(seal.signer)
        return Verdict(seal.signer.fingerprint, own, "your own key" if own else "a trusted key")
    if seal is None:
        problem = "is not signed"
    elif not seal.valid():
        problem = f"has a signature by {seal.signer.fingerprint} that does not verify: it was changed after " \
                  "it was signed"
    else:
        problem = f"is signed by {seal.signer.fingerprint}, a key you do not trust (add its public key with " \
                  f"{trust_option})"
    if not trust.allow_unsigned:
        if trust.own is None and seal is not None and seal.valid():
            problem += f"; you have no key of your own in {default_key_dir()} (wasmig keygen)"
        granting = "what you pass" if api else "what you give on the command line"
        raise SnapshotError(f"{where}: refusing a snapshot that {problem} ({unsigned_option} restores it anyway, "
                            f"granting it only {granting})")
    _warn(f"{where}: restoring a snapshot that {problem}, because of {unsigned_option}: its content is "
          "whatever its author wrote")
    return Verdict(None, False, "unverified (--allow-unsigned)")
