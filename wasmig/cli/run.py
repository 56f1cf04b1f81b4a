"""``wasmig run`` and ``wasmig restore``: a WASI program on an engine (``engines.get``), run to its
end by a :class:`~wasmig.session.loop.Session` under the checkpoint policy the options make."""

from __future__ import annotations

import os
import sys

from wasmig import engines
from wasmig.cli.common import (
    ENGINE_METAVAR,
    ENGINES,
    check_listen_address,
    check_module_option,
    checkpoint_options,
    guarded,
    make_policy,
    module_problem,
    open_listener,
    parse_dirs,
    parse_env,
    peer_identity,
    pick_engine,
    register_with_gateway,
    report_trap,
    size_option,
    trust_options,
)
from wasmig.cli.output import TRAP_EXIT_CODE, UserError, about, err, fail, out
from wasmig.cli.parser import Number, Parser, PathOption, command
from wasmig.errors import DecodeError, LinkError, SnapshotError, Trap, ValidationError, WasmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence

    from wasmig.engines.base import Engine, Program, WasiInstance
    from wasmig.migrate.channel import Identity
    from wasmig.module import Module
    from wasmig.session.loop import Session
    from wasmig.session.policy import CheckpointPolicy


def run_program(program: Program, policy: CheckpointPolicy, module_path: str | None, *, resume: bool) -> int:
    """Run ``program`` to its end under ``policy`` (``resume``: from its restored state); its exit code."""
    from wasmig.session.loop import Session

    session = Session(program, policy, module_path)
    return with_control(session, lambda: ended(session, session.run(resume=resume)))


def ended(session: Session, code: int) -> int:
    """The program ended with exit code ``code`` (which stays the run's): say so if it ended before
    the step ``--checkpoint-at-step`` asked for, so no snapshot was taken."""
    at_step = session.policy.at_step
    steps = session.steps
    if at_step is not None and steps is not None and steps < at_step:
        err(f"wasmig: warning: --checkpoint-at-step {at_step} was never reached (the program ended at step "
            f"{steps})")
    return code


def with_control(session: Session, body: Callable[[], int]) -> int:
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


def migrate_later(session: Session, target: str, identity: Identity, after: float) -> None:
    """``--migrate-to``: move the program ``after`` seconds into the run (a thread of its own);
    the summary, or why it stayed, goes to stderr."""
    import threading

    from wasmig.migrate.protocol import MigrationError
    from wasmig.migrate.source import migrate

    def move() -> None:
        try:
            migrate(session, target, identity, on_done=lambda r: err(f"wasmig: {r.summary()}"))
        except MigrationError as e:
            err(f"wasmig: warning: migration to {target} failed, the program goes on here: {e}")

    timer = threading.Timer(after, move)
    timer.daemon = True
    timer.start()


def invoke_arguments(module: Module, name: str, args: Sequence[str]) -> list[tuple[str, int]]:
    """``--invoke NAME ARGS``: the arguments, parsed by the types of NAME's parameters (checked)."""
    from wasmig.invoke import InvokeError, func_type, parse_args

    try:
        return parse_args(func_type(module, name), list(args))
    except InvokeError as e:
        raise UserError(f"--invoke {name}: {e}") from None


def invoke_function(instance: WasiInstance, name: str, args: list[tuple[str, int]]) -> int:
    """``--invoke NAME``: call it, print its results one per line; the exit code (0, or proc_exit's)."""
    from wasmig.invoke import call, func_type
    from wasmig.wasi.preview1 import ProcExit

    try:
        lines = call(instance, name, args, func_type(instance.module, name).results)
    except ProcExit as e:
        return e.code
    for line in lines:
        out(line)
    return 0


def load_program(program: str, decode: bool) -> tuple[Module, bool]:
    """The module at ``program`` (decoded and validated when ``decode``), and whether it is a
    wasi-threads program (it imports ``wasi.thread-spawn``: docs/threads.md). A threaded module is
    told from its imports alone, since the default decoder refuses its shared memory."""
    from wasmig.errors import UnsupportedFeature
    from wasmig.module import Module
    from wasmig.wasi.threads_abi import imports_thread_spawn

    try:
        module = Module.from_file(program, decode=decode, validate=decode)
    except UnsupportedFeature:
        probe = Module.from_file(program, decode=False, validate=False)
        if not imports_thread_spawn(probe.interface.imports):
            raise
        return probe, True
    return module, imports_thread_spawn(module.interface.imports)


def threaded_engine(runs_on: Engine, asked: str | None, unsupported: str | None, stops: bool, steps: bool) -> Engine:
    """The engine a wasi-threads program runs on: ``runs_on`` if it runs threads -- and, when the
    run may be stopped (``stops``: checkpoint options, ``--migratable``, ``--migrate-to``),
    captures them (:attr:`Engine.captures_threads`), and when it counts steps (``steps``:
    ``--checkpoint-at-step``, ``--count-steps``), is the interpreter, whose scheduler makes a step a
    moment of a reproducible interleaving -- else the interpreter when no engine was asked for
    (with a note); a one-line error when the run asks for what threads do not have yet
    (``unsupported``: ``--invoke``, ``--checkpoint-at-instruction``) or for what the asked engine
    cannot do (docs/threads.md)."""
    if unsupported is not None:
        raise UserError(f"a wasi-threads program cannot be run with {unsupported} yet (docs/threads.md)")
    if runs_on.runs_threads and (not stops or runs_on.captures_threads) and (not steps or runs_on.name == "interp"):
        return runs_on
    if asked is not None and steps:
        raise UserError(f"--engine {asked}: a wasi-threads program counts steps on the interpreter only (its threads "
                        "run freely on wasmtime; --engine interp for --checkpoint-at-step; docs/threads.md)")
    if asked is not None and stops:
        raise UserError(f"--engine {asked}: checkpoints and migrations of a wasi-threads program are not taken on "
                        f"{asked} yet (--engine interp; docs/threads.md)")
    if asked is not None:
        raise UserError(f"--engine {asked}: wasi-threads programs run on the interpreter only so far "
                        "(--engine interp; docs/threads.md)")
    why = ("steps of threads are counted there only" if runs_on.runs_threads and steps
           else "checkpoints of threads are taken there only so far" if runs_on.runs_threads
           else f"{runs_on.name} does not run threads yet")
    err(f"wasmig: note: a wasi-threads program: running it on the interpreter ({why})")
    return engines.get("interp")


def check_plain(checkpoint_dir: str | None, count_steps: bool, migratable: bool, migrate_to: str | None) -> None:
    """``--plain`` asks for a run that never checkpoints: refuse the options that ask for checkpoints."""
    clash = ("--checkpoint-dir" if checkpoint_dir is not None else "--count-steps" if count_steps
             else "--migratable" if migratable else "--migrate-to" if migrate_to is not None else None)
    if clash is not None:
        raise UserError(f"--plain cannot be combined with {clash} (a plain run never checkpoints)")


def checkpointable_on_request(policy: CheckpointPolicy, program: str, engine: str, threaded: bool) -> None:
    """Make a run that asked for no checkpoints take them on request anyway, as CRIU can dump any
    process (issue 18 item 6): ``wasmig checkpoint PID`` writes into
    :func:`~wasmig.session.policy.default_checkpoint_dir` (made by the first such checkpoint) and
    ``wasmig migrate PID`` finds the control socket. On wasmtime this runs the instrumented fast
    variant (cached by the module's hash; ``--plain`` opts out). A wasi-threads program on
    wasmtime stays plain unless checkpoint options ask for its checkpointable variant (every
    thread then stops and is captured: docs/threads.md); on the interpreter it takes
    checkpoints on request but is not made migratable. A run that asked for nothing is not
    refused for want of a usable runtime directory (where the status file and the control socket
    go): it says so in one line and runs without them."""
    from wasmig.runtime_dir import RuntimeDirError, runtime_dir
    from wasmig.session.policy import default_checkpoint_dir

    if threaded and engine != "interp":
        return
    if policy.directory is None and not policy.migratable:
        try:
            runtime_dir(create=True)
        except RuntimeDirError as e:
            err(f"wasmig: warning: {e}; this run cannot be checkpointed or migrated on request")
            return
    if policy.directory is None:
        policy.directory = default_checkpoint_dir(program)
    if not threaded:
        policy.migratable = True


def run_options(p: Parser) -> None:
    p.option("--engine", choices=ENGINES, default=None, metavar=ENGINE_METAVAR,
             help="Execution engine: wasmtime (compiled; the default when installed) or the interpreter.")
    p.option("--invoke", default=None, metavar="NAME",
             help="Call the exported function NAME with ARGS (parsed by its parameter types) instead of "
                  "_start, and print its results, one per line (as `wasmtime run --invoke`).")
    p.option("--dir", dest="dirs", action="append", metavar="HOST[::GUEST]",
             help="Preopen a host directory, optionally under another guest name.")
    p.option("--env", dest="envs", action="append", metavar="NAME[=VALUE]",
             help="Set (or inherit) an environment variable.")
    p.option("--tcplisten", dest="listens", action="append", metavar="HOST:PORT",
             help="Preopen a listening TCP socket (fds 3, 4, ... before the directories).")
    p.option("--migratable", action="store_true",
             help="Accepted for compatibility: every run but a --plain one can be moved by `wasmig migrate PID`.")
    p.option("--plain", action="store_true",
             help="Run without checkpoints: on wasmtime the module as it is, not its checkpointable variant (the "
                  "last percent of speed, no instrumentation on a first run); `wasmig checkpoint PID` and "
                  "`wasmig migrate PID` refuse the run.")
    p.option("--gateway", dest="gateway_address", default=None, metavar="HOST:PORT",
             help="Preopen a listening socket held by `wasmig gateway` (its control address), after the "
                  "--tcplisten ones: its connections survive migrations.")
    p.option("--gateway-fingerprint", default=(), action="append", metavar="FP|PUBFILE",
             help="The gateway's key (sha256:... fingerprint, or its wasmig.pub): needed with --gateway.")
    p.option("--migrate-to", default=None, metavar="HOST:PORT",
             help="Move the program to this `wasmig serve` daemon once it ran --migrate-after seconds.")
    p.option("--migrate-peer-fingerprint", default=(), action="append", metavar="FP|PUBFILE",
             help="The daemon's key (sha256:... fingerprint, or its wasmig.pub): needed with --migrate-to.")
    p.option("--migrate-token-file", default=None, type=PathOption(directory=False), metavar="FILE",
             help="A shared secret the daemon also requires (optional second factor, mode 600).")
    p.option("--key", dest="key_dir", default=None, type=PathOption(directory=True), metavar="DIRECTORY",
             help="This run's key pair, shown to gateways and migration targets (default: the user's, "
                  "made on first use).")
    p.option("--migrate-after", type=Number(float, 0), default=0.0, show_default=True, metavar="SECONDS",
             help="When --migrate-to moves the program.")
    checkpoint_options(p)

@command("run", run_options, "program", rest="args")
def run(engine: str | None, invoke: str | None, dirs: tuple[str, ...], envs: tuple[str, ...], listens: tuple[str, ...],
        migratable: bool, plain: bool, gateway_address: str | None, gateway_fingerprint: tuple[str, ...],
        migrate_to: str | None, migrate_peer_fingerprint: tuple[str, ...], migrate_token_file: str | None,
        key_dir: str | None, migrate_after: float,
        checkpoint_dir: str | None, checkpoint_at_step: int | None,
        checkpoint_at_instruction: int | None, checkpoint_every: float | None, checkpoint_then: str,
        stable_only: bool, count_steps: bool, program: str, args: tuple[str, ...]) -> None:
    """Run a WASI program: PROGRAM.wasm [ARGS...].

    Options go before PROGRAM; everything after it is the program's (its arguments)."""
    from wasmig.module import Module
    from wasmig.wasi.preview1 import Wasi

    listeners: list[socket.socket] = []
    try:
        if os.path.isdir(program):
            raise UserError(f"{program}: is a directory, not a WebAssembly module")
        preopens = parse_dirs(dirs)
        env = parse_env(envs)
        runs_on = engines.get(pick_engine(engine, interp_only=checkpoint_at_instruction is not None))
        if plain:
            check_plain(checkpoint_dir, count_steps, migratable, migrate_to)
        policy = make_policy(checkpoint_dir, checkpoint_at_step, checkpoint_at_instruction, checkpoint_every,
                             checkpoint_then, stable_only, count_steps, migratable or migrate_to is not None)
        if invoke is not None and (policy.active or policy.migratable):
            raise UserError("--invoke cannot be combined with --checkpoint-dir, --migratable or --migrate-to")
        if migrate_to is not None:
            identity = peer_identity(migrate_to, "--migrate-to", key_dir, migrate_peer_fingerprint,
                                     "--migrate-peer-fingerprint", migrate_token_file)
            policy.migrate_to = (migrate_to, identity, migrate_after)
        listeners = [open_listener(spec) for spec in listens]
        gateways = ([] if gateway_address is None
                    else [register_with_gateway(gateway_address, key_dir, gateway_fingerprint)])
        # an engine that compiles the module itself (wasmtime) gets it decoded only as far as linking
        # needs (its instrumented variant: decoding and validation wait until the pass needs them,
        # which a cached instrumented module spares, as on restore)
        module, threaded = load_program(program, runs_on.needs_ir)
        if threaded:
            unsupported = ("--invoke" if invoke is not None
                           else "--checkpoint-at-instruction" if checkpoint_at_instruction is not None else None)
            runs_on = threaded_engine(runs_on, engine, unsupported, policy.active or policy.migratable,
                                      policy.active and policy.count_steps)
            module = Module.from_file(program, features={"threads"})
        invoke_args = invoke_arguments(module, invoke, args) if invoke is not None else None
        if not plain and invoke is None:
            checkpointable_on_request(policy, program, runs_on.name, threaded)
    except UserError as e:
        for sock in listeners:
            sock.close()
        fail(str(e))
        return
    except (DecodeError, ValidationError) as e:
        fail(module_problem(program, e))
        return
    try:
        wasi = Wasi([program, *args], env, preopens=preopens, listeners=listeners, gateway_listeners=gateways)
    except WasmError as e:
        fail(f"--gateway {gateway_address}: {e}")
        return
    try:
        if invoke is not None:
            instance = runs_on.instantiate_wasi(module, wasi)
        else:
            runnable = runs_on.program(module, wasi, checkpoints=policy.active or policy.migratable,
                                       count_steps=policy.count_steps, announce=os.path.basename(program))
            if "_start" not in runnable.export_names():
                raise LinkError("the module has no `_start` export: it is not a WASI command (to call one of its "
                                "functions, use --invoke NAME)")
    except (LinkError, Trap, WasmError) as e:
        wasi.close()
        if isinstance(e, (DecodeError, ValidationError)):  # found when wasmtime compiled it
            fail(module_problem(program, e))
        if isinstance(e, Trap):
            report_trap(e)
            sys.exit(TRAP_EXIT_CODE)
        fail(str(e) if isinstance(e, SnapshotError) else f"{program}: {e}")
        return
    if invoke is not None:
        sys.exit(guarded(lambda: invoke_function(instance, invoke, invoke_args), wasi, policy, program) & 0xFF)
    stops = policy.active or policy.migratable
    if threaded and (not runs_on.captures_threads or not stops and runs_on.name != "interp"):  # runs to its end
        sys.exit(guarded(lambda: runs_on.run_threaded_command(module, wasi), wasi, policy, program) & 0xFF)
    path = os.path.abspath(program)
    sys.exit(guarded(lambda: run_program(runnable, policy, path, resume=False), wasi, policy, path) & 0xFF)


def restore_options(p: Parser) -> None:
    p.option("--engine", choices=ENGINES, default=None, metavar=ENGINE_METAVAR,
             help="Execution engine: wasmtime (the default when installed, for snapshots at a stable point) or "
                  "the interpreter.")
    p.option("--dir", dest="dirs", action="append", metavar="HOST[::GUEST]",
             help="Grant the snapshot's guest directory GUEST the host directory HOST (needed for each one; a "
                  "snapshot signed with your own key may reuse where it was).")
    p.option("--tcplisten", dest="listens", action="append", metavar="HOST:PORT",
             help="Grant the snapshot's listening sockets these addresses, in fd order (as with run; a snapshot "
                  "signed with your own key may reuse its own).")
    p.option("--gateway", dest="gateways", action="append", metavar="HOST:PORT",
             help="Let the program re-attach to the socket gateway at this control address.")
    p.option("--module", dest="module_path", default=None,
             help="The .wasm the snapshot was taken of (default: the copy kept in the checkpoint directory).")
    p.option("--on-file-change", choices=["fail", "warn", "ignore"], default="fail", show_default=True,
             metavar="[fail|warn|ignore]",
             help="What to do when an open file's size or mtime changed since the checkpoint.")
    trust_options(p, "Restore")
    p.option("--max-memory", type=size_option, default=None, metavar="SIZE",
             help="Refuse a snapshot whose memory is larger (e.g. 2G; default 1G), before reading it.")
    checkpoint_options(p)


@command("restore", restore_options, "snapshot")
def restore(engine: str | None, dirs: tuple[str, ...], listens: tuple[str, ...], gateways: tuple[str, ...],
            module_path: str | None, on_file_change: str, trust_files: tuple[str, ...], allow_unsigned: bool,
            max_memory: int | None, checkpoint_dir: str | None, checkpoint_at_step: int | None,
            checkpoint_at_instruction: int | None, checkpoint_every: float | None, checkpoint_then: str,
            stable_only: bool, count_steps: bool, snapshot: str) -> None:
    """Restore SNAPSHOT (a snapshot file, or a checkpoint directory: its latest) and continue it.

    The snapshot must be signed by your own key or one given with --trust; its program gets only
    the directories and sockets granted here (see docs/security.md)."""
    import time

    from wasmig import log
    from wasmig.grants import GrantError
    from wasmig.session.clearance import Requested, clear
    from wasmig.session.modules import find_module_for
    from wasmig.snapshot.admission import trust_from_options
    from wasmig.wasi.snapshot import restore_wasi

    wasi = None
    try:
        mapping = {guest: host for host, guest in parse_dirs(dirs)}
        for spec in listens:
            check_listen_address(spec)
        policy = make_policy(checkpoint_dir, checkpoint_at_step, checkpoint_at_instruction, checkpoint_every,
                             checkpoint_then, stable_only, count_steps)
        check_module_option(module_path)
        started = time.perf_counter()
        # the seal and the memory's size, from the manifest alone; then the manifest that was checked
        # (only it: the memory's pages are read as they are written into the new instance), and what
        # its program is granted -- the decision wasmig.restore makes too
        cleared = clear(snapshot, Requested(mapping, listens, gateways), max_memory=max_memory,
                        trust=trust_from_options(trust_files, allow_unsigned))
        snap, pages = cleared.snap, cleared.pages
        log.info(__name__, "restore: snapshot read in %.3f s (%d pages of memory)", time.perf_counter() - started,
                 sum(len(m.data) // 65536 for m in snap.memories) if pages is None else sum(map(len, pages)))
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
        if snap.threads is not None and engine not in (None, "interp") and policy.count_steps:
            raise UserError(f"--engine {engine}: a multi-threaded program on wasmtime does not count steps "
                            "(--engine interp for --checkpoint-at-step; docs/threads.md)")
        runs_on = engines.get(pick_engine(engine, interp_only=checkpoint_at_instruction is not None
                                          or not snap.stable or (snap.threads is not None and
                                                                 (engine is None or policy.count_steps))))
        # on wasmtime, validation waits until the instrumentation pass needs it, which a cached
        # instrumented module spares (a restore's largest cost for a small module)
        started = time.perf_counter()
        module = find_module_for(snapshot, snap, module_path, validate=runs_on.needs_ir,
                                 decode=runs_on.needs_ir, features={"threads"} if snap.threads is not None else None)
        log.info(__name__, "restore: module found and read in %.3f s", time.perf_counter() - started)
        if snap.wasi is None:
            raise SnapshotError("the snapshot has no WASI state: it is not of a WASI program")
        wasi = restore_wasi(snap.wasi, granted=cleared.granted, on_file_change=on_file_change)
        recorded = snap.meta.get("module_path")
        recorded = recorded if isinstance(recorded, str) else None
        runnable = runs_on.restore(module, snap, wasi, pages=pages, count_steps=policy.count_steps,
                                   announce=os.path.basename(recorded) if recorded else "the module")
    except (UserError, GrantError) as e:
        if wasi is not None:
            wasi.close()
        fail(str(e))
        return
    except (SnapshotError, DecodeError, ValidationError, LinkError) as e:
        if wasi is not None:
            wasi.close()
        fail(about(snapshot, e))
        return
    sys.exit(guarded(lambda: run_program(runnable, policy, recorded, resume=True), wasi, policy, recorded) & 0xFF)
