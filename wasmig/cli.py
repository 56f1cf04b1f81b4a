"""The ``wasmig`` command line.

Conventions follow ``wasmtime run``: stdio passes through, the guest's exit code becomes the
process exit code, a trap prints the wasm backtrace on stderr and exits with 134 (what a
process that aborts reports). Every bad input is one ``wasmig: error: ...`` line and a non-zero
exit, never a Python traceback.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import click

from wasmig.errors import DecodeError, LinkError, Trap, ValidationError, WasmError

TRAP_EXIT_CODE = 134
ERROR_EXIT_CODE = 1
DIFF_DIFFERENT_EXIT_CODE = 1  # `wasmig diff`, as diff(1): the snapshots differ...
DIFF_TROUBLE_EXIT_CODE = 2  # ...or one could not be read
ENGINES = ["interp", "wasmtime"]
INTERP_ONLY = "--checkpoint-at-instruction is available on the interpreter only (use --engine interp)"


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 1."""


def _fail(message: str, code: int = ERROR_EXIT_CODE) -> None:
    click.echo(f"wasmig: error: {message}", err=True)
    sys.exit(code)


def _about(path: str, e: Exception) -> str:
    """``path: message``, unless the message already names the path (store errors do)."""
    text = str(e)
    return text if path in text else f"{path}: {text}"


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


def check_guest_dirs(mapping: dict[str, str], wasi_state: Any) -> None:
    """``restore --dir HOST::GUEST``: every GUEST is a directory the snapshot has preopened."""
    guests = sorted({fd.preopen for fd in wasi_state.fds if fd.preopen is not None})
    for guest, host in mapping.items():
        if guest not in guests:
            raise UserError(f"--dir {host}::{guest}: the snapshot has no guest directory {guest!r} (its guest "
                            f"directories: {', '.join(guests) if guests else 'none'})")


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


def open_listener(spec: str) -> socket.socket:
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


def address_and_token(address: str, option: str, token_file: str | None, token_option: str) -> bytes:
    """The token for ``option ADDRESS`` (checked), read from ``token_option``'s file."""
    from wasmig.migrate.protocol import parse_address, read_token

    if token_file is None:
        raise UserError(f"{option} needs {token_option}")
    try:
        parse_address(address, option)
        return read_token(token_file)
    except WasmError as e:
        raise UserError(str(e)) from None


def register_with_gateway(address: str, token_file: str | None) -> tuple[str, bytes]:
    """(control address, key) of a fresh registration with the gateway at ``address``."""
    from wasmig.migrate.gateway import register

    token = address_and_token(address, "--gateway", token_file, "--gateway-token-file")
    try:
        return address, register(address, token)
    except WasmError as e:
        raise UserError(str(e)) from None


def report_trap(trap: Trap) -> None:
    click.echo(f"Error: wasm trap: {trap.reason}", err=True)
    if trap.backtrace:
        click.echo("wasm backtrace:", err=True)
        for i, line in enumerate(trap.backtrace):
            click.echo(f"  {i:>3}: {line}", err=True)


def wasmtime_available() -> bool:
    from wasmig.engines import wasmtime_missing

    return wasmtime_missing() is None


_fallback_noted = False


def note_fallback() -> None:
    """Say once per process that the default engine fell back to the interpreter, and why: a
    program that silently runs 50-100x slower looks like a hang."""
    global _fallback_noted
    if not _fallback_noted:
        from wasmig.engines import wasmtime_missing

        _fallback_noted = True
        click.echo(f"wasmig: note: running on wasmig's interpreter (much slower than compiled code): "
                   f"{wasmtime_missing()}", err=True)


def pick_engine(engine: str | None, *, interp_only: bool) -> str:
    """``--engine``, or by default wasmtime (compiled) when installed and nothing asks for what only
    the interpreter does; then the interpreter (with a note when only wasmtime's absence chose it)."""
    if engine is None:
        if interp_only:
            return chosen("interp", "the default for what only the interpreter can do (an instruction-precise "
                                    "checkpoint or snapshot)")
        if wasmtime_available():
            return chosen("wasmtime", "the default: the wasmtime package is installed")
        note_fallback()
        return chosen("interp", "fallback: wasmtime is not available")
    if engine == "wasmtime":
        from wasmig.engines import wasmtime_missing

        if not wasmtime_available():
            raise UserError(f"--engine wasmtime is not available: {wasmtime_missing()}")
        if interp_only:
            raise UserError(INTERP_ONLY)
    return chosen(engine, f"--engine {engine}")


def chosen(engine: str, why: str) -> str:
    from wasmig import log

    log.info(__name__, "engine: %s (%s)", engine, why)
    return engine


def show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--version``: wasmig's version and the engines this host can run (the default marked)."""
    if not value or ctx.resilient_parsing:
        return
    from importlib import metadata

    from wasmig.engines import describe_engines

    click.echo(f"wasmig {metadata.version('wasmig')}, Python {sys.version.split()[0]}\nengines:\n{describe_engines()}")
    ctx.exit()


def module_problem(program: str, e: Exception) -> str:
    """The one line for a module that cannot be read, is a component, or is not valid."""
    component = component_problem(program)
    if component is not None:
        return component
    kind = "cannot read" if "cannot read module" in str(e) else "not a valid WebAssembly module"
    return f"{program}: {kind}: {str(e).replace(f'cannot read module {program}: ', '')}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show_version,
              help="Show the version and the engines available, then exit.")
@click.option("-v", "--verbose", count=True,
              help="Log the engine chosen, cache hits, checkpoint and restore times on stderr (-vv: more; "
                   "or WASMIG_LOG=debug|info).")
def main(verbose: int) -> None:
    """Checkpoint, restore and live-migrate running WebAssembly (WASI) programs."""
    if verbose or os.environ.get("WASMIG_LOG"):
        from wasmig import log

        problem = log.configure(verbose, os.environ.get("WASMIG_LOG"))
        if problem is not None:
            click.echo(f"wasmig: warning: {problem}", err=True)


def checkpoint_options(f: Any) -> Any:
    """The checkpoint options shared by ``run`` and ``restore``."""
    options = [
        click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
                     help="Write snapshots here (several snapshots of one run share its page store)."),
        click.option("--checkpoint-at-step", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Checkpoint at the N-th stable point (function entries + loop entries); engine-neutral."),
        click.option("--checkpoint-at-instruction", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Checkpoint after exactly N instructions (interpreter only)."),
        click.option("--checkpoint-every", type=click.FloatRange(min=0.001), default=None, metavar="SECONDS",
                     help="Checkpoint periodically."),
        click.option("--checkpoint-then", type=click.Choice(["continue", "exit"]), default="continue",
                     show_default=True, help="After a checkpoint: keep running, or stop."),
        click.option("--stable-only", is_flag=True,
                     help="Advance an instruction-precise stop to the next stable point (portable snapshot)."),
        click.option("--count-steps", is_flag=True,
                     help="On wasmtime, count stable points as the interpreter does, so snapshots carry the step "
                          "number (slower: the deterministic variant; implied by --checkpoint-at-step)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def check_writable_dir(path: str, option: str) -> None:
    """Create directory ``path`` if needed and make sure a file can be written in it."""
    import tempfile

    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".wasmig-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or e})") from None


def make_policy(checkpoint_dir: str | None, at_step: int | None, at_instruction: int | None, every: float | None,
                then: str, stable_only: bool, count_steps: bool = False, migratable: bool = False) -> Any:
    from pathlib import Path

    from wasmig.snapshot.policy import CheckpointPolicy

    if checkpoint_dir is None and (at_step is not None or at_instruction is not None or every is not None):
        raise UserError("--checkpoint-at-step/--checkpoint-at-instruction/--checkpoint-every need --checkpoint-dir")
    # refused now, before the program runs, rather than a warning at every checkpoint it takes
    if checkpoint_dir is not None:
        check_writable_dir(checkpoint_dir, "--checkpoint-dir")
    return CheckpointPolicy(Path(checkpoint_dir) if checkpoint_dir else None, at_step, at_instruction, every, then,
                            stable_only, count_steps or at_step is not None, migratable=migratable)


def run_session(instance: Any, wasi: Any, policy: Any, module_path: str | None, *, resume: bool) -> int:
    """Run to the end under ``policy``; returns the process exit code (traps and errors reported)."""
    if instance.engine == "interp":
        from wasmig.snapshot.session import Session

        session = Session(instance, wasi, policy, module_path)
        return guarded(lambda: with_control(session, lambda: ended(session, session.run(resume=resume))), wasi,
                       policy, module_path)
    return guarded(lambda: run_compiled(instance), wasi, policy, module_path)


def ended(session: Any, code: int) -> int:
    """The program ended with exit code ``code`` (which stays the run's): say so if it ended before
    the step ``--checkpoint-at-step`` asked for, so no snapshot was taken."""
    at_step = session.policy.at_step
    steps = session.steps
    if at_step is not None and steps is not None and steps < at_step:
        click.echo(f"wasmig: warning: --checkpoint-at-step {at_step} was never reached (the program ended at step "
                   f"{steps})", err=True)
    return code


def with_control(session: Any, body: Any) -> int:
    """``body()``, with the control socket ``wasmig migrate PID`` talks to when the run is
    migratable, and the migration ``--migrate-to`` asks for."""
    if not session.policy.migratable:
        return body()
    from wasmig.migrate.control import serve_control

    control = serve_control(session)
    if session.policy.migrate_to is not None:
        migrate_later(session, *session.policy.migrate_to)
    try:
        return body()
    finally:
        control.close()


def migrate_later(session: Any, target: str, token: bytes, after: float) -> None:
    """``--migrate-to``: move the program ``after`` seconds into the run (a thread of its own);
    the summary, or why it stayed, goes to stderr."""
    import threading

    from wasmig.migrate.protocol import MigrationError
    from wasmig.migrate.source import migrate

    def move() -> None:
        try:
            migrate(session, target, token, on_done=lambda r: click.echo(f"wasmig: {r.summary()}", err=True))
        except MigrationError as e:
            click.echo(f"wasmig: warning: migration to {target} failed, the program goes on here: {e}", err=True)

    timer = threading.Timer(after, move)
    timer.daemon = True
    timer.start()


def guarded(body: Any, wasi: Any, policy: Any, module_path: str | None) -> int:
    """``body()``'s exit code, with a checkpoint-and-exit, traps and errors reported as the CLI does."""
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.policy import CheckpointExit, MigratedAway, MigrationInDoubt

    try:
        return body()
    except CheckpointExit:
        click.echo(f"wasmig: checkpoint written to {policy.written[-1]}; exiting", err=True)
        return 0
    except MigrationInDoubt as e:
        click.echo(f"wasmig: error: the migration target did not confirm the commit; the program may run there, "
                   f"so it stops here; its state is in {e.path}", err=True)
        return 75
    except MigratedAway:
        click.echo("wasmig: the program moved to another machine; exiting", err=True)
        return 0
    except Trap as trap:
        report_trap(trap)
        return TRAP_EXIT_CODE
    except SnapshotError as e:
        _fail(str(e))
    except WasmError as e:
        _fail(f"{module_path or 'program'}: {e}")
    except KeyboardInterrupt:
        return 130
    finally:
        wasi.close()
    return ERROR_EXIT_CODE


def run_checkpointable(module: Any, wasi: Any, policy: Any, module_path: str | None, snapshot: Any = None) -> int:
    """A run (or, with ``snapshot``, a restore) on wasmtime with checkpoints: the instrumented module
    in a worker thread, signals and timers in this one."""
    import time

    from wasmig import log
    from wasmig.snapshot.wasmtime_session import Checkpointable, WasmtimeSession

    def body() -> int:
        started = time.perf_counter()
        runner = Checkpointable(module, wasi, count_steps=policy.count_steps)
        if snapshot is not None:
            runner.load(snapshot)
            log.info(__name__, "restore: instrumented module instantiated and state loaded on wasmtime in %.3f s",
                     time.perf_counter() - started)
        session = WasmtimeSession(runner, wasi, policy, module_path)
        return with_control(session, lambda: ended(session, session.run(snapshot)))

    return guarded(body, wasi, policy, module_path)


def invoke_arguments(module: Any, name: str, args: Sequence[str]) -> list[tuple[str, int]]:
    """``--invoke NAME ARGS``: the arguments, parsed by the types of NAME's parameters (checked)."""
    from wasmig.invoke import InvokeError, func_type, parse_args

    try:
        return parse_args(func_type(module, name), list(args))
    except InvokeError as e:
        raise UserError(f"--invoke {name}: {e}") from None


def invoke_function(instance: Any, name: str, args: list[tuple[str, int]]) -> int:
    """``--invoke NAME``: call it, print its results one per line; the exit code (0, or proc_exit's)."""
    from wasmig.invoke import call, func_type
    from wasmig.wasi.preview1 import ProcExit

    try:
        lines = call(instance, name, args, func_type(instance.module, name).results)
    except ProcExit as e:
        return e.code
    for line in lines:
        click.echo(line)
    return 0


def run_compiled(instance: Any) -> int:
    """``_start`` on the wasmtime engine, without checkpoints (no --checkpoint-dir: the plain module,
    at full speed). Python sees Ctrl-C only when it runs again, i.e. at the guest's next host call,
    so a guest computing without any would ignore it: SIGINT gets its default action instead and
    ends the process at once, as it ends ``wasmtime run``."""
    import signal

    from wasmig.snapshot.policy import ignore_checkpoint_request
    from wasmig.wasi.run import run_start

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    # a checkpoint request must not kill the program (SIGUSR1's default action): say no instead
    signal.signal(signal.SIGUSR1, ignore_checkpoint_request)
    return run_start(instance)


@main.command(context_settings={"allow_interspersed_args": False})
@click.option("--engine", type=click.Choice(ENGINES), default=None,
              help="Execution engine: wasmtime (compiled; the default when installed) or the interpreter.")
@click.option("--invoke", default=None, metavar="NAME",
              help="Call the exported function NAME with ARGS (parsed by its parameter types) instead of "
                   "_start, and print its results, one per line (as `wasmtime run --invoke`).")
@click.option("--dir", "dirs", multiple=True, metavar="HOST[::GUEST]",
              help="Preopen a host directory, optionally under another guest name.")
@click.option("--env", "envs", multiple=True, metavar="NAME[=VALUE]", help="Set (or inherit) an environment variable.")
@click.option("--tcplisten", "listens", multiple=True, metavar="HOST:PORT",
              help="Preopen a listening TCP socket (fds 3, 4, ... before the directories).")
@click.option("--migratable", is_flag=True,
              help="Run so that `wasmig migrate PID` can move it (on wasmtime: the checkpointable variant).")
@click.option("--gateway", "gateway_address", default=None, metavar="HOST:PORT",
              help="Preopen a listening socket held by `wasmig gateway` (its control address), after the "
                   "--tcplisten ones: its connections survive migrations.")
@click.option("--gateway-token-file", default=None, type=click.Path(dir_okay=False),
              help="The gateway's shared secret (needed with --gateway).")
@click.option("--migrate-to", default=None, metavar="HOST:PORT",
              help="Move the program to this `wasmig serve` daemon once it ran --migrate-after seconds.")
@click.option("--migrate-token-file", default=None, type=click.Path(dir_okay=False),
              help="The daemon's shared secret (needed with --migrate-to).")
@click.option("--migrate-after", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="SECONDS",
              help="When --migrate-to moves the program.")
@checkpoint_options
@click.argument("program")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(engine: str | None, invoke: str | None, dirs: tuple[str, ...], envs: tuple[str, ...], listens: tuple[str, ...],
        migratable: bool, gateway_address: str | None, gateway_token_file: str | None, migrate_to: str | None,
        migrate_token_file: str | None, migrate_after: float,
        checkpoint_dir: str | None, checkpoint_at_step: int | None,
        checkpoint_at_instruction: int | None, checkpoint_every: float | None, checkpoint_then: str,
        stable_only: bool, count_steps: bool, program: str, args: tuple[str, ...]) -> None:
    """Run a WASI program: PROGRAM.wasm [ARGS...].

    Options go before PROGRAM; everything after it is the program's (its arguments)."""
    from wasmig.module import Module
    from wasmig.wasi.preview1 import Wasi
    from wasmig.wasi.run import instantiate_with_wasi

    listeners: list[socket.socket] = []
    try:
        if os.path.isdir(program):
            raise UserError(f"{program}: is a directory, not a WebAssembly module")
        preopens = [parse_dir(d) for d in dirs]
        env = parse_env(envs)
        engine = pick_engine(engine, interp_only=checkpoint_at_instruction is not None)
        policy = make_policy(checkpoint_dir, checkpoint_at_step, checkpoint_at_instruction, checkpoint_every,
                             checkpoint_then, stable_only, count_steps, migratable or migrate_to is not None)
        if invoke is not None and (policy.active or policy.migratable):
            raise UserError("--invoke cannot be combined with --checkpoint-dir, --migratable or --migrate-to")
        if migrate_to is not None:
            token = address_and_token(migrate_to, "--migrate-to", migrate_token_file, "--migrate-token-file")
            policy.migrate_to = (migrate_to, token, migrate_after)
        listeners = [open_listener(spec) for spec in listens]
        gateways = [] if gateway_address is None else [register_with_gateway(gateway_address, gateway_token_file)]
        # plain wasmtime validates and compiles the module itself: Python decodes only what linking needs
        plain_wasmtime = engine == "wasmtime" and not (policy.active or policy.migratable)
        module = Module.from_file(program, decode=not plain_wasmtime)
        invoke_args = invoke_arguments(module, invoke, args) if invoke is not None else None
    except UserError as e:
        for sock in listeners:
            sock.close()
        _fail(str(e))
        return
    except (DecodeError, ValidationError) as e:
        _fail(module_problem(program, e))
        return
    try:
        wasi = Wasi([program, *args], env, preopens=preopens, listeners=listeners, gateway_listeners=gateways)
    except WasmError as e:
        _fail(f"--gateway {gateway_address}: {e}")
        return
    if engine == "wasmtime" and (policy.active or policy.migratable):  # the instrumented module
        sys.exit(run_checkpointable(module, wasi, policy, os.path.abspath(program)) & 0xFF)
    try:
        instance = instantiate_with_wasi(module, wasi, engine)
        if invoke is None and "_start" not in instance.exports:
            raise LinkError("the module has no `_start` export: it is not a WASI command (to call one of its "
                            "functions, use --invoke NAME)")
    except (LinkError, Trap, WasmError) as e:
        wasi.close()
        if isinstance(e, (DecodeError, ValidationError)):  # found when wasmtime compiled it
            _fail(module_problem(program, e))
        if isinstance(e, Trap):
            report_trap(e)
            sys.exit(TRAP_EXIT_CODE)
        _fail(f"{program}: {e}")
        return
    instance.wasi = wasi
    if invoke is not None:
        sys.exit(guarded(lambda: invoke_function(instance, invoke, invoke_args), wasi, policy, program) & 0xFF)
    code = run_session(instance, wasi, policy, os.path.abspath(program), resume=False)
    sys.exit(code & 0xFF)


@main.command()
@click.option("--engine", type=click.Choice(ENGINES), default=None,
              help="Execution engine: wasmtime (the default when installed, for snapshots at a stable point) or "
                   "the interpreter.")
@click.option("--dir", "dirs", multiple=True, metavar="HOST[::GUEST]",
              help="Map a preopened guest directory to a host directory (default: where it was).")
@click.option("--module", "module_path", default=None, help="The .wasm the snapshot was taken of (default: the "
              "copy kept in the checkpoint directory).")
@click.option("--on-file-change", type=click.Choice(["fail", "warn", "ignore"]), default="fail", show_default=True,
              help="What to do when an open file's size or mtime changed since the checkpoint.")
@checkpoint_options
@click.argument("snapshot")
def restore(engine: str | None, dirs: tuple[str, ...], module_path: str | None, on_file_change: str,
            checkpoint_dir: str | None, checkpoint_at_step: int | None, checkpoint_at_instruction: int | None,
            checkpoint_every: float | None, checkpoint_then: str, stable_only: bool, count_steps: bool,
            snapshot: str) -> None:
    """Restore SNAPSHOT (a snapshot file, or a checkpoint directory: its latest) and continue it."""
    import time
    from pathlib import Path

    from wasmig import log
    from wasmig.snapshot.api import restore as restore_instance
    from wasmig.snapshot.session import find_module_for
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import load_snapshot

    try:
        mapping = {}
        for d in dirs:
            host, guest = parse_dir(d)
            mapping[guest] = host
        policy = make_policy(checkpoint_dir, checkpoint_at_step, checkpoint_at_instruction, checkpoint_every,
                             checkpoint_then, stable_only, count_steps)
        check_module_option(module_path)
        started = time.perf_counter()
        snap = load_snapshot(Path(snapshot))
        log.info(__name__, "restore: snapshot read in %.3f s (%d pages of memory)", time.perf_counter() - started,
                 sum(len(m.data) for m in snap.memories) // 65536)
        if policy.count_steps and snap.steps is None:
            raise UserError("the snapshot has no step count (its run did not count steps), so "
                            f"{'--checkpoint-at-step' if checkpoint_at_step is not None else '--count-steps'} "
                            "cannot go on from it")
        if checkpoint_at_step is not None and checkpoint_at_step <= snap.steps:
            raise UserError(f"--checkpoint-at-step {checkpoint_at_step} is not ahead of the snapshot "
                            f"(it is at step {snap.steps})")
        if checkpoint_at_instruction is not None and snap.instructions is not None and \
                checkpoint_at_instruction < snap.instructions:
            raise UserError(f"--checkpoint-at-instruction {checkpoint_at_instruction} is not ahead of the snapshot "
                            f"(it is at instruction {snap.instructions})")
        engine = pick_engine(engine, interp_only=checkpoint_at_instruction is not None or not snap.stable)
        # on wasmtime, validation waits until the instrumentation pass needs it, which a cached
        # instrumented module spares (a restore's largest cost for a small module)
        started = time.perf_counter()
        module = find_module_for(Path(snapshot), snap, module_path, validate=engine != "wasmtime")
        log.info(__name__, "restore: module found and read in %.3f s", time.perf_counter() - started)
        if snap.wasi is None:
            raise SnapshotError("the snapshot has no WASI state: it is not of a WASI program")
        check_guest_dirs(mapping, snap.wasi)
        if engine == "wasmtime":
            from wasmig.wasi.snapshot import restore_wasi

            wasi = restore_wasi(snap.wasi, dirs=mapping, on_file_change=on_file_change)
            sys.exit(run_checkpointable(module, wasi, policy, snap.meta.get("module_path"), snap) & 0xFF)
        started = time.perf_counter()
        instance = restore_instance(snap, engine, module=module, dirs=mapping, on_file_change=on_file_change)
        log.info(__name__, "restore: state restored on the interpreter in %.3f s", time.perf_counter() - started)
    except UserError as e:
        _fail(str(e))
        return
    except (SnapshotError, DecodeError, ValidationError, LinkError) as e:
        _fail(_about(snapshot, e))
        return
    code = run_session(instance, instance.wasi, policy, snap.meta.get("module_path"), resume=True)
    sys.exit(code & 0xFF)


@main.command("checkpoint")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for the snapshot.")
@click.argument("pid", type=int)
def checkpoint_cmd(timeout: float, pid: int) -> None:
    """Ask a running `wasmig run --checkpoint-dir ...` (process PID) for a snapshot now."""
    from wasmig.snapshot.session import wait_for_snapshot
    from wasmig.snapshot.state import SnapshotError

    try:
        path = wait_for_snapshot(pid, timeout)
    except SnapshotError as e:
        _fail(str(e))
        return
    click.echo(str(path))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--module", "module_path", default=None, help="The .wasm, for function names.")
@click.argument("snapshot")
def inspect(as_json: bool, module_path: str | None, snapshot: str) -> None:
    """Summarise a snapshot: call stack, memory, open files."""
    import json
    from pathlib import Path

    from wasmig.snapshot.inspect import format_summary, summarize
    from wasmig.snapshot.session import find_module_for
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import checkpoint_chain, load_snapshot, storage_stats

    try:
        snap = load_snapshot(Path(snapshot))
        stats = storage_stats(snapshot)
        chain = checkpoint_chain(snapshot)
    except SnapshotError as e:
        _fail(_about(snapshot, e))
        return
    try:
        ir = find_module_for(Path(snapshot), snap, module_path).ir
    except (SnapshotError, WasmError):
        ir = None
    summary = summarize(snap, ir, stats, chain)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.argument("directory")
def gc(dry_run: bool, directory: str) -> None:
    """Remove the pages of a checkpoint DIRECTORY that no snapshot names any more."""
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import CheckpointDir

    if not os.path.isdir(os.path.join(directory, "snapshots")):
        _fail(f"{directory}: not a checkpoint directory (no snapshots/ in it)")
        return
    try:
        stats = CheckpointDir(directory).gc(dry_run=dry_run)
    except SnapshotError as e:
        _fail(_about(directory, e))
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{directory}: {stats['snapshots']} snapshots, {stats['pages_kept']} pages kept; {verb} "
               f"{stats['pages_removed']} unreferenced pages ({stats['bytes_removed']} bytes)"
               + (f" and {stats['temp_files_removed']} stale temporary files" if stats["temp_files_removed"] else ""))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("a")
@click.argument("b")
def diff(as_json: bool, a: str, b: str) -> None:
    """List what changed between two snapshots. Exit status as diff(1)'s: 0 when they hold the same
    state, 1 when they differ, 2 on trouble."""
    import json
    from pathlib import Path

    from wasmig.snapshot.inspect import diff as diff_snapshots
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import load_snapshot

    try:
        snaps = [load_snapshot(Path(a)), load_snapshot(Path(b))]
    except SnapshotError as e:
        _fail(str(e), DIFF_TROUBLE_EXIT_CODE)
        return
    lines = diff_snapshots(*snaps)
    if as_json:
        click.echo(json.dumps({"a": a, "b": b, "same": not lines, "differences": lines}, indent=2))
    else:
        for line in lines:
            click.echo(line)
    sys.exit(DIFF_DIFFERENT_EXIT_CODE if lines else 0)


@main.command()
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to accept migrations.")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False),
              help="The shared secret (at least 16 bytes, mode 600) sources must prove they hold.")
@click.option("--dir", "dirs", multiple=True, metavar="HOST::GUEST",
              help="Map a migrated program's preopened guest directory GUEST to host directory HOST here.")
@click.option("--engine", type=click.Choice(ENGINES), default=None,
              help="The engine migrated programs run on here (default: wasmtime when installed).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Where received modules and pages are cached (default: ~/.cache/wasmig/serve).")
@click.option("--page-cache-mb", type=click.IntRange(min=0), default=2048, show_default=True,
              help="Keep at most this much of earlier migrations' pages (trimmed when the daemon starts).")
def serve(listen: str, token_file: str, dirs: tuple[str, ...], engine: str | None, state_dir: str | None,
          page_cache_mb: int) -> None:
    """Receive migrating programs, restore them and run them here."""
    from pathlib import Path

    from wasmig.migrate.protocol import MigrationError, parse_address, read_token
    from wasmig.migrate.target import serve as serve_forever

    try:
        token = read_token(token_file)
        host, port = parse_address(listen, "--listen")
        mapping = {guest: host_dir for host_dir, guest in map(parse_dir, dirs)}
        engine = pick_engine(engine, interp_only=False)
        state = Path(state_dir) if state_dir else Path.home() / ".cache" / "wasmig" / "serve"
        sock = open_listener(f"{host}:{port}")
    except (UserError, MigrationError) as e:
        _fail(str(e).replace("--tcplisten", "--listen"))
        return
    try:
        serve_forever(sock, token, engine=engine, dirs=mapping, state_dir=state, page_cache_mb=page_cache_mb)
    except KeyboardInterrupt:
        sys.exit(130)


@main.command("migrate")
@click.option("--to", "to", required=True, metavar="HOST:PORT", help="The `wasmig serve` daemon to move to.")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False), help="The daemon's shared secret.")
@click.option("--quiet", is_flag=True, help="No progress bar, only the summary line.")
@click.option("--no-precopy", is_flag=True, help="Stop the program at once and send everything while it is stopped.")
@click.argument("pid", type=int)
def migrate_cmd(to: str, token_file: str, quiet: bool, no_precopy: bool, pid: int) -> None:
    """Move the running `wasmig run --migratable` process PID to another machine."""
    from wasmig.migrate.control import request_migration
    from wasmig.migrate.progress import ProgressView
    from wasmig.migrate.protocol import MigrationError, parse_address, read_token

    try:
        parse_address(to, "--to")
        token = read_token(token_file)
        messages = request_migration(pid, to, token, precopy=not no_precopy)
        with ProgressView(enabled=not quiet) as view:
            for msg in messages:
                if "progress" in msg:
                    view.update(msg["progress"])
                elif "done" in msg:
                    view.finish()
                    click.echo(f"wasmig: {msg['done']['summary']}")
                    return
                elif "error" in msg:
                    raise MigrationError(f"migration failed, the program goes on in process {pid}: {msg['error']}")
        raise MigrationError(f"process {pid} ended the request without an answer")
    except MigrationError as e:
        _fail(str(e))


@main.command()
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where clients connect.")
@click.option("--control", required=True, metavar="HOST:PORT",
              help="Where programs (`wasmig run --gateway`) register and attach their connections.")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False),
              help="The shared secret a program must prove it holds to register (at least 16 bytes, mode 600).")
def gateway(listen: str, control: str, token_file: str) -> None:
    """Front a program's listening socket, so its TCP connections survive its migrations."""
    from wasmig.migrate.gateway import Gateway, log
    from wasmig.migrate.protocol import MigrationError, read_token

    try:
        token = read_token(token_file)
        public = open_listener(listen)
        ctl = open_listener(control)
    except (UserError, MigrationError) as e:
        _fail(str(e).replace("--tcplisten", "--listen/--control"))
        return
    log(f"clients on {listen}, programs on {control}")
    try:
        Gateway(public, ctl, token).serve()
    except KeyboardInterrupt:
        sys.exit(130)


@main.command("export")
@click.option("-o", "--output", required=True, metavar="FILE.wsnap", help="The file to write.")
@click.option("--module", "module_path", default=None,
              help="The .wasm the snapshot was taken of (default: the copy kept in the checkpoint directory).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.argument("snapshot")
def export_cmd(output: str, module_path: str | None, force: bool, snapshot: str) -> None:
    """Pack SNAPSHOT (a checkpoint directory: its latest; or a snapshot file), every page it names and
    its module into one file, which `wasmig restore`, `inspect` and `import` read."""
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.wsnap import export_snapshot

    try:
        result = export_snapshot(snapshot, output, module=module_path, force=force)
    except SnapshotError as e:
        _fail(str(e))
        return
    click.echo(f"wasmig: exported {result.snapshot} to {result.output} ({result.pages} pages, {result.bytes} bytes)",
               err=True)


@main.command("import")
@click.argument("file")
@click.argument("directory")
def import_cmd(file: str, directory: str) -> None:
    """Unpack the .wsnap FILE into the checkpoint DIRECTORY (created if missing) as its newest
    snapshot; prints the new snapshot file's path."""
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.wsnap import import_wsnap

    try:
        path = import_wsnap(file, directory)
    except SnapshotError as e:
        _fail(str(e))
        return
    click.echo(str(path))
