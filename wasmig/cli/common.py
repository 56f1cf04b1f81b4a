"""What several commands share: checkpoint options and the policy they make, ``--dir`` and
``--env`` syntax, the engine choice, listening sockets and tokens, and how a run's end is reported."""

from __future__ import annotations

import os
import posixpath  # already loaded by os: no start-up cost
import sys

from wasmig import engines
from wasmig.cli.output import ERROR_EXIT_CODE, TRAP_EXIT_CODE, UserError, err, fail, out
from wasmig.cli.parser import Number, Parser, PathOption
from wasmig.errors import DecodeError, Trap, ValidationError, WasmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterable, Sequence

    from wasmig.migrate.channel import Identity
    from wasmig.session.policy import CheckpointPolicy
    from wasmig.wasi.preview1 import Wasi

#: ``--engine``'s choices, and how its help shows them
ENGINES = list(engines.NAMES)
ENGINE_METAVAR = f"[{'|'.join(ENGINES)}]"
#: The longest checkpoint period (about 31 years): the interval timer (``setitimer``) holds no more on a
#: 32-bit ``time_t`` and overflows with a traceback beyond about 1e11 s on a 64-bit one.
MAX_PERIOD_S = 1e9
INTERP_ONLY = "--checkpoint-at-instruction is available on the interpreter only (use --engine interp)"


def parse_dir(spec: str) -> tuple[str, str]:
    """``HOST[::GUEST]`` -> (host, guest); the guest name defaults to HOST as written. The same
    syntax on every command (``run``, ``restore``, ``serve``)."""
    if "::" not in spec and "=" in spec and not os.path.isdir(spec):
        guest, _, host = spec.partition("=")
        if guest and host:  # `serve --dir GUEST=HOST`, the old form
            raise UserError(f"bad --dir {spec!r}: --dir takes HOST::GUEST (host directory first); "
                            f"write --dir {host}::{guest}")
    host, sep, guest = spec.partition("::")
    if not host or (sep and not guest):
        raise UserError(f"bad --dir {spec!r}: expected HOST or HOST::GUEST")
    if not os.path.isdir(host):
        raise UserError(f"--dir {host!r}: not a directory")
    return host, guest if sep else host


def parse_dirs(specs: Iterable[str]) -> list[tuple[str, str]]:
    """Every ``--dir`` as (host, guest), refusing two at one guest path: WASI would preopen both
    and a guest's path resolves in one of them only (``run`` kept the first, ``restore`` and
    ``serve`` the last), so the other directory was silently out of reach."""
    out: list[tuple[str, str]] = []
    given: dict[str, str] = {}
    for spec in specs:
        host, guest = parse_dir(spec)
        key = posixpath.normpath(guest)  # /x, /x/ and /x/. are one preopen path to the guest
        if key in given:
            if given[key] == spec:
                raise UserError(f"--dir {spec!r} is given twice")
            raise UserError(f"--dir {spec!r}: guest path {guest!r} is already --dir {given[key]!r} "
                            "(one host directory per guest path)")
        given[key] = spec
        out.append((host, guest))
    return out


def component_problem(path: str) -> str | None:
    """What to say when ``path`` is a WebAssembly component (the component model's binary: the
    same magic as a core module, then a version and layer 1) where a core module is expected."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[:4] == b"\0asm" and head[6:8] == b"\x01\x00":
        return f"{path} is a WebAssembly component, not a core module: wasmig runs core modules (wasm32-wasip1)"
    return None


def check_module_option(path: str | None) -> None:
    """``--module PATH`` names a core module file that exists."""
    if path is None:
        return
    if not os.path.exists(path):
        raise UserError(f"--module {path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"--module {path}: is a directory, not a WebAssembly module")
    component = component_problem(path)
    if component is not None:
        raise UserError(component)


def parse_env(specs: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not name:
            raise UserError(f"bad --env {spec!r}: expected NAME=VALUE or NAME")
        if not sep:  # `--env NAME` inherits the host's value, as wasmtime does
            if name not in os.environ:
                raise UserError(f"--env {name}: not set in the host environment")
            value = os.environ[name]
        env[name] = value
    return env


def check_listen_address(spec: str) -> None:
    """``--tcplisten HOST:PORT`` is well formed (it is opened later, once granted)."""
    from wasmig.wire import WireError, parse_address

    try:
        parse_address(spec, "--tcplisten", any_port=True)
    except WireError as e:
        raise UserError(str(e)) from None

def open_listener(spec: str) -> socket.socket:
    import socket

    from wasmig.wire import WireError, parse_address

    try:
        host, port = parse_address(spec, "--tcplisten", any_port=True)
    except WireError as e:
        raise UserError(str(e)) from None
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        raise UserError(f"--tcplisten {spec}: {e.strerror or e}") from None
    return sock


def peer_identity(address: str, option: str, key_dir: str | None, peers: tuple[str, ...], peer_option: str,
                  token_file: str | None = None) -> Identity:
    """This side's :class:`~wasmig.migrate.channel.Identity` for ``option ADDRESS``, pinning the
    peer ``peer_option`` names (a fingerprint or a public key file); the token, if any, a second factor."""
    from wasmig.migrate.channel import identity_from_options
    from wasmig.migrate.protocol import parse_address, read_token

    if not peers:
        raise UserError(f"{option} needs {peer_option} (the peer's key fingerprint, or its wasmig.pub)")
    try:
        parse_address(address, option)
        return identity_from_options(key_dir, peers, read_token(token_file) if token_file else None)
    except WasmError as e:
        raise UserError(f"{peer_option}: {e}" if "fingerprint" in str(e) else str(e)) from None


def register_with_gateway(address: str, key_dir: str | None, fingerprint: tuple[str, ...]) -> tuple[str, bytes]:
    """(control address, the gateway key's digest) of a fresh registration with the gateway at ``address``."""
    from wasmig.wasi.gateway import register, use_key

    identity = peer_identity(address, "--gateway", key_dir, fingerprint, "--gateway-fingerprint")
    use_key(identity.pair)  # the key this run (and its restores) shows the gateway
    try:
        return address, register(address, next(iter(identity.trusted)))
    except WasmError as e:
        raise UserError(str(e)) from None


def report_trap(trap: Trap) -> None:
    err(f"Error: wasm trap: {trap.reason}")
    if trap.backtrace:
        err("wasm backtrace:")
        for i, line in enumerate(trap.backtrace):
            err(f"  {i:>3}: {line}")


_fallback_noted = False


def note_fallback(why: str) -> None:
    """Say once per process that the default engine fell back to the interpreter, and why: a
    program that silently runs 50-100x slower looks like a hang."""
    global _fallback_noted
    if not _fallback_noted:
        _fallback_noted = True
        err(f"wasmig: note: running on wasmig's interpreter (much slower than compiled code): {why}")


def pick_engine(engine: str | None, *, interp_only: bool) -> str:
    """``--engine``, or by default the preferred engine that runs here (wasmtime, compiled) unless the
    run asks for what only the interpreter does (with a note when only wasmtime's absence chose it)."""
    if engine is None:
        name, why, passed_over = engines.default(instruction_precise=interp_only)
        if passed_over is not None:
            note_fallback(passed_over)
        return chosen(name, why)
    problem = engines.missing(engine)
    if problem is not None:
        raise UserError(f"--engine {engine} is not available: {problem}")
    if interp_only and engine not in engines.INSTRUCTION_PRECISE:
        raise UserError(INTERP_ONLY)
    return chosen(engine, f"--engine {engine}")


def chosen(engine: str, why: str) -> str:
    from wasmig import log

    log.info(__name__, "engine: %s (%s)", engine, why)
    return engine


def show_version() -> None:
    """``--version``: wasmig's version and the engines this host can run (the default marked)."""
    from importlib import metadata

    from wasmig.engines import describe_engines

    out(f"wasmig {metadata.version('wasmig')}, Python {sys.version.split()[0]}\nengines:\n{describe_engines()}")


def module_problem(program: str, e: Exception) -> str:
    """The one line for a module that cannot be read, is a component, or is not valid."""
    component = component_problem(program)
    if component is not None:
        return component
    kind = "cannot read" if "cannot read module" in str(e) else "not a valid WebAssembly module"
    return f"{program}: {kind}: {str(e).replace(f'cannot read module {program}: ', '')}"


# --- the command line parser ----------------------------------------------------------------------------


def checkpoint_options(parser: Parser) -> None:
    """The checkpoint options shared by ``run`` and ``restore``."""
    parser.option("--checkpoint-dir", type=PathOption(directory=True), default=None, metavar="DIRECTORY|URL",
                  help="Write snapshots here (several snapshots of one run share its page store): a directory, "
                       "file:///shared/path or s3://bucket/prefix (docs/stores.md).")
    parser.option("--checkpoint-at-step", type=Number(int, 1), default=None, metavar="N",
                  help="Checkpoint at the N-th stable point (function entries + loop entries); engine-neutral.")
    parser.option("--checkpoint-at-instruction", type=Number(int, 0), default=None, metavar="N",
                  help="Checkpoint after exactly N instructions (interpreter only).")
    parser.option("--checkpoint-every", type=Number(float, 0.001, MAX_PERIOD_S), default=None, metavar="SECONDS",
                  help="Checkpoint periodically.")
    parser.option("--checkpoint-then", choices=["continue", "exit"], default="continue", show_default=True,
                  metavar="[continue|exit]", help="After a checkpoint: keep running, or stop.")
    parser.option("--stable-only", action="store_true",
                  help="Advance an instruction-precise stop to the next stable point (portable snapshot).")
    parser.option("--count-steps", action="store_true",
                  help="On wasmtime, count stable points as the interpreter does, so snapshots carry the step "
                       "number (slower: the deterministic variant; implied by --checkpoint-at-step).")


def check_writable_dir(path: str, option: str) -> None:
    """Create directory ``path`` if needed and make sure a file can be written in it (a probe file
    of this process's own name, not ``tempfile``, whose imports cost 3 ms of every start)."""
    import time

    try:
        os.makedirs(path, mode=0o700, exist_ok=True)  # snapshots are their owner's alone (docs/security.md)
        probe = os.path.join(path, f".wasmig-probe-{os.getpid()}-{time.monotonic_ns()}")
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or e})") from None


def check_checkpoint_store(where: str) -> None:
    """``--checkpoint-dir``: a directory that can be written, or a store URL whose backend answers
    and takes a write (a bad URL, an unreachable endpoint, no such bucket: one line, now). A local
    directory is checked without opening its store: the snapshot writer's imports wait until the
    run is under way (:attr:`~wasmig.session.policy.CheckpointPolicy.active`)."""
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores import check_store_name, is_store_url

    try:
        check_store_name(where)  # an unknown scheme (ftp://...) is refused, not made a directory
        if is_store_url(where):
            from wasmig.snapshot.stores import open_store

            open_store(where).check_writable()
    except SnapshotError as e:
        raise UserError(f"--checkpoint-dir {where}: {e}") from None
    if not is_store_url(where):
        check_writable_dir(where, "--checkpoint-dir")


def make_policy(checkpoint_dir: str | None, at_step: int | None, at_instruction: int | None, every: float | None,
                then: str, stable_only: bool, count_steps: bool = False, migratable: bool = False) -> CheckpointPolicy:
    from pathlib import Path

    from wasmig.session.policy import CheckpointPolicy

    if checkpoint_dir is None and (at_step is not None or at_instruction is not None or every is not None):
        raise UserError("--checkpoint-at-step/--checkpoint-at-instruction/--checkpoint-every need --checkpoint-dir")
    # refused now, before the program runs, rather than a warning at every checkpoint it takes
    if checkpoint_dir is not None:
        check_checkpoint_store(checkpoint_dir)
        from wasmig.key_dir import own_key_present

        if not own_key_present():
            from wasmig.snapshot.signing import own_key_pair

            # made and announced now, not amid the program's output; a key that is there is loaded
            # (with the cryptography package: 20-40 ms) beside the running program, as the store
            # is opened (CheckpointPolicy.active), so neither the start nor the first checkpoint waits for it
            own_key_pair()
    from wasmig.snapshot.stores import is_store_url

    directory = checkpoint_dir if is_store_url(checkpoint_dir) else Path(checkpoint_dir) if checkpoint_dir else None
    return CheckpointPolicy(directory, at_step, at_instruction, every, then,
                            stable_only, count_steps or at_step is not None, migratable=migratable)


def guarded(body: Callable[[], int], wasi: Wasi, policy: CheckpointPolicy, module_path: str | None) -> int:
    """``body()``'s exit code, with a checkpoint-and-exit, traps and errors reported as the CLI does."""
    from wasmig.errors import SnapshotError
    from wasmig.session.policy import CheckpointExit, MigratedAway, MigrationInDoubt

    try:
        return body()
    except CheckpointExit:
        err(f"wasmig: checkpoint written to {policy.written[-1]}; exiting")
        return 0
    except MigrationInDoubt as e:
        err(f"wasmig: error: {e.why}; its state is in {e.path}: restore it with `wasmig restore --module "
             f"PROGRAM.wasm {e.path}` if it does not run on the target")
        return 75
    except MigratedAway:
        err("wasmig: the program moved to another machine; exiting")
        return 0
    except Trap as trap:
        report_trap(trap)
        return TRAP_EXIT_CODE
    except SnapshotError as e:
        fail(str(e))
    except (DecodeError, ValidationError) as e:  # found late: validation waits for the instrumentation pass
        fail(module_problem(module_path or "program", e))
    except WasmError as e:
        fail(f"{module_path or 'program'}: {e}")
    except KeyboardInterrupt:
        return 130
    finally:
        wasi.close()
    return ERROR_EXIT_CODE


def size_option(text: str) -> int:
    """A ``--max-memory`` value (``2G``, ``512M``, bytes) in bytes."""
    from wasmig.snapshot.limits import parse_size

    return parse_size(text)


def trust_options(p: Parser, verb: str) -> None:
    """``--trust`` and ``--allow-unsigned``, as ``restore`` and ``inspect --verify`` take them."""
    p.option("--trust", dest="trust_files", action="append", metavar="KEYFILE",
             help=f"{verb} snapshots signed by this public key (a wasmig.pub) too, besides your own.")
    p.option("--allow-unsigned", action="store_true",
             help=f"{verb} a snapshot that is unsigned or signed by a key not trusted (with a warning); it still "
                  "gets only the host resources granted here.")
