"""The ``wasmig`` command line.

Conventions follow ``wasmtime run``: stdio passes through, the guest's exit code becomes the
process exit code, a trap prints the wasm backtrace on stderr and exits with 134 (what a
process that aborts reports). Every bad input is one ``wasmig: error: ...`` line and a non-zero
exit, never a Python traceback.

One module per command family, each parsing its options and calling the library:
:mod:`~wasmig.cli.run` (``run``, ``restore``), :mod:`~wasmig.cli.snapshots` (``checkpoint``,
``inspect``, ``diff``, ``gc``, ``export``, ``import``), :mod:`~wasmig.cli.migration` (``serve``,
``migrate``, ``gateway``); :mod:`~wasmig.cli.parser` reads a command line, :mod:`~wasmig.cli.common`
has what several commands share. Importing them costs a few milliseconds: argparse, the engine
registry and the checkpoint policy; an engine, the snapshot store or sockets are imported by the
command that uses them, when it runs (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import os
import sys

try:
    from wasmig.cli import cluster, migration, run, snapshots  # noqa: F401 - each registers its commands
    from wasmig.cli.common import show_version
    from wasmig.cli.output import err
    from wasmig.cli.parser import COMMANDS, CommandLineError, Group, suggest
except KeyboardInterrupt:  # Ctrl-C while the command's modules load: the shell's 130, not a traceback
    os._exit(130)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TextIO


def _group_parser(prog: str) -> Group:
    parser = Group(prog, "Checkpoint, restore and live-migrate running WebAssembly (WASI) programs.", rest="args",
                    usage="%(prog)s [OPTIONS] COMMAND [ARGS]...")
    parser.option("--version", action="store_true", help="Show the version and the engines available, then exit.")
    parser.option("-v", "--verbose", action="count", default=0,
                  help="Log the engine chosen, cache hits, checkpoint and restore times on stderr (-vv: more; "
                       "or WASMIG_LOG=debug|info).")
    parser.add_help_option()

    def version() -> None:
        show_version()
        sys.exit(0)

    parser.eager["version"] = version
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """The ``wasmig`` command (the console script; ``python -m wasmig``): runs ``argv`` (by default
    the process's arguments) and exits with the command's exit code; a usage error exits with 2.
    Without ``argv`` (the process's own command), the process ends at once (:func:`leave`)."""
    if argv is not None:
        command(list(argv), "wasmig")
    script = os.path.basename(sys.argv[0])
    try:
        command(sys.argv[1:], "python -m wasmig" if script == "__main__.py" else script or "wasmig")
    except SystemExit as e:
        leave(e.code)
        raise


def leave(code: object) -> None:
    """End the process with exit code ``code`` as Python's own exit does -- non-daemon threads
    joined (and threading's exit hooks: a thread pool's workers), ``atexit`` handlers run, stdout
    and stderr flushed -- but without the interpreter's finalization, which costs a run ~15 ms of
    CPU after its last ``atexit`` handler (wasmtime's objects and every module torn down, for a
    process about to end anyway: wasmtime-py's own run pays the same, ``wasmtime run`` none).
    Returns, for the caller's ordinary exit, when ``code`` is not a number (a message), under a
    profiler or tracer (which writes its results after ``main`` returns), without
    ``threading._shutdown`` (another Python), or when a stream cannot be flushed (Python then
    reports it, and exits with 120, as before)."""
    if not (code is None or isinstance(code, int)) or sys.getprofile() is not None or sys.gettrace() is not None:
        return
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if threading is not None and shutdown is None:  # pragma: no cover - another Python
        return
    if shutdown is not None:
        shutdown()
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            return
    os._exit(code or 0)


def command(argv: list[str], prog: str) -> None:
    """Run the command line ``argv`` (``prog``: the program's name in messages); raises
    ``SystemExit`` with its exit code."""
    open_closed_stdio()
    try:
        dispatch(prog, argv)
    except CommandLineError as e:
        err(e.report())
        sys.exit(2)
    except (EOFError, KeyboardInterrupt):  # as click reported them (a run's own Ctrl-C exits with 130)
        err("\nAborted!")
        sys.exit(1)
    except BrokenPipeError:  # stdout's reader went away (`wasmig inspect ... | head`): quietly
        sys.stdout, sys.stderr = _Unflushed(sys.stdout), _Unflushed(sys.stderr)
        sys.exit(1)
    sys.exit(0)


def open_closed_stdio() -> None:
    """Put /dev/null on any of fds 0-2 the process was started without (``wasmig run prog.wasm <&-``),
    as a daemon does: else the next file, pipe or socket wasmig opens takes that number, and the
    guest reads its stdin from wasmig's own wake-up pipe (a run that never ended) or writes its
    output into whatever file got fd 1. Python left ``sys.stdout`` None for such an fd, which each
    command's output line then failed on (an AttributeError traceback); it now writes to /dev/null,
    as ``print`` does then."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # the process's own, never closed


def dispatch(prog: str, argv: list[str]) -> None:
    """Parse ``argv`` (the group's options, the command, its options and arguments) and run the command."""
    group = _group_parser(prog)
    if not argv:
        err(group.format_help().rstrip("\n"))
        sys.exit(2)
    options = group.parse(argv)
    if not options["args"]:
        raise CommandLineError("Missing command.", group)
    name, *args = options["args"]
    if name not in COMMANDS:
        if name[:1] == "-" and name != "-":  # after `--`: an option, as click reported it
            group.parse(options["args"])
        raise CommandLineError(f"No such command {name!r}.{suggest(name, COMMANDS)}", group)
    verbose, level = options["verbose"], os.environ.get("WASMIG_LOG")
    if verbose or level:
        from wasmig import log

        problem = log.configure(verbose, level)
        if problem is not None:
            err(f"wasmig: warning: {problem}")
    found = COMMANDS[name]
    found.function(**found.parser(f"{prog} {name}").parse(args))


class _Unflushed:
    """A stream whose reader went away: the flush at exit fails quietly."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
