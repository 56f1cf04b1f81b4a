"""TLS 1.3 with pinned Ed25519 keys: the encrypted, mutually authenticated channel of migrations
and of the socket gateway's control connections (docs/security.md, "Network: TLS, pinned keys, bounds").

Every daemon, gateway and migration source is identified by its :class:`~wasmig.keys.KeyPair`;
a peer is accepted when the public key it proves to hold in the TLS handshake has a fingerprint
the other side was told to trust (``--peer-fingerprint``, ``--trust-peer``). Both directions:
the server requests the client's certificate.

Why an "issuer" whose private key is public: Python's :mod:`ssl` has no verification callback,
so with ``CERT_REQUIRED`` OpenSSL insists on a chain to a loaded CA, and a self-signed leaf the
verifier has never seen fails. Each side therefore presents a leaf certificate for its own key,
signed by :data:`ISSUER` -- a key derived from a public constant that *carries no trust at all*
(anyone can mint such a certificate). What authenticates a peer is (1) TLS 1.3's CertificateVerify,
which proves possession of the leaf's private key, and (2) the fingerprint of that leaf's public
key, checked against the pinned ones right after the handshake (:func:`peer_fingerprint`). That
is the pattern of Go's ``InsecureSkipVerify`` plus ``VerifyPeerCertificate``, within the limits
of :mod:`ssl`.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import sys
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from wasmig.keys import KeyFileError, KeyPair, fingerprint_of, load_public_key, parse_fingerprint
from wasmig.wire import WireError

#: the issuer's seed: public on purpose (see the module docstring); it grants nothing
_ISSUER_SEED = b"wasmig pinned-key issuer: carries no trust, peers are pinned by key fingerprint"
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class ChannelError(WireError):
    """The TLS handshake failed, or the peer is not the one pinned."""


@dataclass(frozen=True)
class Identity:
    """Who this side is (``pair``), whom it accepts (``trusted``: fingerprints) and the optional
    shared token, a second factor that never travels (see :mod:`wasmig.migrate.protocol`)."""

    pair: KeyPair
    trusted: frozenset[str]
    token: bytes | None = None
    _contexts: dict[bool, ssl.SSLContext] = field(default_factory=dict, compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        return self.pair.fingerprint

    def pinning(self, fingerprint: str) -> Identity:
        """The same key and token, trusting only ``fingerprint`` (a client pins its server)."""
        return Identity(self.pair, frozenset({fingerprint}), self.token)

    def context(self, server: bool) -> ssl.SSLContext:
        """The TLS context of this identity (made once per side: loading a key costs a file write)."""
        ctx = self._contexts.get(server)
        if ctx is None:
            ctx = self._contexts[server] = tls_context(self.pair, server)
        return ctx


def _issuer_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(_ISSUER_SEED).digest())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@lru_cache(maxsize=1)
def issuer_certificate() -> bytes:
    """The issuer's self-signed CA certificate (PEM); deterministic, as Ed25519 signatures are."""
    key = _issuer_key()
    cert = (x509.CertificateBuilder().subject_name(_name("wasmig pinned-key issuer")).issuer_name(
        _name("wasmig pinned-key issuer")).public_key(key.public_key()).serial_number(1)
        .not_valid_before(_NOT_BEFORE).not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, None))
    return cert.public_bytes(serialization.Encoding.PEM)


def leaf_certificate(pair: KeyPair) -> bytes:
    """A certificate (PEM) for ``pair``'s public key, signed by the issuer: what this side presents."""
    cert = (x509.CertificateBuilder().subject_name(_name(f"wasmig {pair.fingerprint[7:39]}"))
            .issuer_name(_name("wasmig pinned-key issuer"))
            .public_key(Ed25519PublicKey.from_public_bytes(pair.public.raw))
            .serial_number(int.from_bytes(pair.public.raw[:16], "big") | 1)
            .not_valid_before(_NOT_BEFORE).not_valid_after(_NOT_AFTER)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(_issuer_key(), None))
    return cert.public_bytes(serialization.Encoding.PEM)


def tls_context(pair: KeyPair, server: bool) -> ssl.SSLContext:
    """TLS 1.3 only, this key's certificate, the peer's certificate required (both sides); the
    hostname is not checked: the peer is pinned by fingerprint after the handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=issuer_certificate().decode())
    if server:
        ctx.num_tickets = 0  # no resumption: every connection proves its key again
    # ssl loads a key only from a file: a private directory (0700), removed at once
    with tempfile.TemporaryDirectory(prefix="wasmig-tls-") as tmp:
        key_path, cert_path = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pair.private_pem())
        cert_path.write_bytes(leaf_certificate(pair))
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def peer_fingerprint(sock: ssl.SSLSocket) -> str:
    """The fingerprint of the key the peer proved to hold in the handshake."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise ChannelError("the peer presented no certificate")
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ChannelError("the peer's certificate is not for an Ed25519 key")
    return fingerprint_of(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def secure(sock: socket.socket, identity: Identity, *, server: bool, peer: str, timeout: float) -> ssl.SSLSocket:
    """The TLS handshake over ``sock`` (taken over), then the pin check; the peer's fingerprint
    must be one of ``identity.trusted``. Raises ChannelError (one line) on any failure."""
    sock.settimeout(timeout)
    try:
        tls = identity.context(server).wrap_socket(sock, server_side=server, do_handshake_on_connect=False)
        tls.do_handshake()
    except (ssl.SSLError, OSError) as e:
        sock.close()
        reason = getattr(e, "reason", None) or e.strerror or str(e) or type(e).__name__
        raise ChannelError(f"{peer}: TLS handshake failed ({str(reason).lower().replace('_', ' ')})") from None
    got = peer_fingerprint(tls)
    if got not in identity.trusted:
        tls.close()
        role = "client" if server else "server"
        wanted = (f"the pinned {next(iter(identity.trusted))}" if len(identity.trusted) == 1 and not server
                  else "none of the trusted keys")
        raise ChannelError(f"{peer}: the {role}'s key is {got}, {wanted} (is it the right peer? "
                           f"{'--trust-peer' if server else '--peer-fingerprint'} names whom to accept)")
    return tls


def parse_peers(specs: Iterable[str]) -> frozenset[str]:
    """``--trust-peer``/``--peer-fingerprint`` values: a fingerprint, or a ``wasmig.pub`` file
    (or a directory holding one); KeyFileError (one line) when neither."""
    found = set()
    for spec in specs:
        if spec.strip().lower().startswith("sha256:"):
            found.add(parse_fingerprint(spec))
            continue
        path = Path(spec).expanduser()
        if not os.path.exists(path):  # not Path.exists: it raises for a name over NAME_MAX
            raise KeyFileError(f"{spec!r} is neither a key fingerprint (sha256:<64 hex digits>) nor a public key file")
        found.add(load_public_key(path).fingerprint)
    return frozenset(found)


class Watchdog:
    """A deadline for a whole exchange (a handshake), not per ``recv``: when it passes, the socket
    is shut down, so that any read blocked on it ends at once -- a peer trickling a byte every few
    seconds cannot hold a connection open past it."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.expired = False
        self._sock = sock.dup()  # the same connection, whatever becomes of ``sock`` (TLS takes it over)
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self) -> None:
        self._timer.cancel()
        self._sock.close()


def own_key(key_dir: str | None) -> KeyPair:
    """This side's key pair: from ``--key DIR``, else the user's (made on first use, 0600 in a
    0700 directory, and announced on stderr with its fingerprint: the one thing to hand to peers)."""
    from wasmig.keys import default_key_dir, load_key_pair, write_key_pair

    if key_dir is not None:
        return load_key_pair(Path(key_dir).expanduser())
    directory = default_key_dir()
    if not (directory / "wasmig.key").exists():
        pair = KeyPair.generate(comment=f"{os.environ.get('USER', 'wasmig')}@{os.uname().nodename}")
        write_key_pair(pair, directory)
        print(f"wasmig: created a key pair in {directory} (fingerprint {pair.fingerprint}; give peers "
              f"{directory / 'wasmig.pub'})", file=sys.stderr, flush=True)
        return pair
    return load_key_pair(directory)


def identity_from_options(key_dir: str | None, peers: Iterable[str], token: bytes | None) -> Identity:
    """The Identity the command-line options describe (KeyFileError, one line, when they do not)."""
    trusted = parse_peers(peers)  # refused before a key is made on first use
    return Identity(own_key(key_dir), trusted, token)
