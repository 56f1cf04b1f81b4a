"""The ``wasmig`` command line.

Conventions follow ``wasmtime run``: stdio passes through, the guest's exit code becomes the
process exit code, a trap prints the wasm backtrace on stderr and exits with 134 (what a
process that aborts reports). Every bad input is one ``wasmig: error: ...`` line and a non-zero
exit, never a Python traceback.

The options are declared with argparse, which also formats ``--help``; a command line is read
by ``_Parser.parse``, with the rules of click (the library this CLI was first written with, left
for its start-up cost): see there. Only argparse, os, sys and wasmig.errors are imported here;
every command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from wasmig.errors import DecodeError, LinkError, Trap, ValidationError, WasmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from typing import Any

TRAP_EXIT_CODE = 134
ERROR_EXIT_CODE = 1
DIFF_DIFFERENT_EXIT_CODE = 1  # `wasmig diff`, as diff(1): the snapshots differ...
DIFF_TROUBLE_EXIT_CODE = 2  # ...or one could not be read
ENGINES = ["interp", "wasmtime"]
INTERP_ONLY = "--checkpoint-at-instruction is available on the interpreter only (use --engine interp)"


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 1."""


def _out(line: str) -> None:
    """A line on stdout, written whole and flushed at once (it keeps its place among the guest's output)."""
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _fail(message: str, code: int = ERROR_EXIT_CODE) -> None:
    _err(f"wasmig: error: {message}")
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
                  token_file: str | None = None) -> Any:
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
    _err(f"Error: wasm trap: {trap.reason}")
    if trap.backtrace:
        _err("wasm backtrace:")
        for i, line in enumerate(trap.backtrace):
            _err(f"  {i:>3}: {line}")


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
        _err(f"wasmig: note: running on wasmig's interpreter (much slower than compiled code): "
             f"{wasmtime_missing()}")


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


def show_version() -> None:
    """``--version``: wasmig's version and the engines this host can run (the default marked)."""
    from importlib import metadata

    from wasmig.engines import describe_engines

    _out(f"wasmig {metadata.version('wasmig')}, Python {sys.version.split()[0]}\nengines:\n{describe_engines()}")


def module_problem(program: str, e: Exception) -> str:
    """The one line for a module that cannot be read, is a component, or is not valid."""
    component = component_problem(program)
    if component is not None:
        return component
    kind = "cannot read" if "cannot read module" in str(e) else "not a valid WebAssembly module"
    return f"{program}: {kind}: {str(e).replace(f'cannot read module {program}: ', '')}"


# --- the command line parser ----------------------------------------------------------------------------


class CommandLineError(Exception):
    """A command line the parser refuses: usage, a hint and ``Error: MESSAGE`` on stderr, exit code 2."""

    def __init__(self, message: str, parser: _Parser) -> None:
        super().__init__(message)
        self.parser = parser

    def report(self) -> str:
        return (f"{self.parser.format_usage()}Try '{self.parser.prog} --help' for help.\n\n"
                f"Error: {self}")


class _Number:
    """An int or float option value, with an optional lower bound."""

    def __init__(self, kind: type[int] | type[float], low: float | None = None) -> None:
        self.kind, self.low = kind, low

    def __call__(self, text: str) -> float:
        name = ("integer" if self.kind is int else "float") + (" range" if self.low is not None else "")
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid {name}.") from None
        if self.low is not None and value < self.low:
            raise ValueError(f"{value} is not in the range {self.bounds()}.")
        return value

    def bounds(self) -> str:
        return f"x>={self.low}"


class _Path:
    """A path option: one that exists must be a directory (``directory``) or must not be one, and readable."""

    def __init__(self, directory: bool) -> None:
        self.directory = directory

    def __call__(self, text: str) -> str:
        what = "Directory" if self.directory else "File"
        if self.directory and os.path.isfile(text):
            raise ValueError(f"Directory {text!r} is a file.")
        if not self.directory and os.path.isdir(text):
            raise ValueError(f"File {text!r} is a directory.")
        if os.path.exists(text) and not os.access(text, os.R_OK):
            raise ValueError(f"{what} {text!r} is not readable.")
        return text


def _help_width() -> int:
    import shutil

    return max(min(shutil.get_terminal_size().columns, 80) - 2, 50)


class _Formatter(argparse.HelpFormatter):
    """``--help`` laid out as click laid it out: ``Usage:``, the description's paragraphs indented,
    then ``Options:`` with ``-o, --output FILE`` and the help beside (``[default: ...]`` after it)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=_help_width())

    def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage: ")

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        indent += "  "
        return "\n\n".join(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent) for paragraph in text.split("\n\n"))

    def _split_lines(self, text: str, width: int) -> list[str]:  # keeps the two spaces before [default: ...]
        import textwrap

        return textwrap.wrap(text, width)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        names = ", ".join(action.option_strings)
        return names if action.nargs == 0 else f"{names} {action.metavar}"


class _Parser(argparse.ArgumentParser):
    """One command's options (declared with argparse, which formats ``--help``) and its arguments.

    ``parse`` reads a command line by the rules of click, which wasmig's CLI was written with:
    ``--name VALUE`` and ``--name=VALUE`` (VALUE taken as it is, even ``-x``), ``-oVALUE``,
    short flags together (``-vv``), no abbreviations; ``--`` ends the options; a word that is not
    an option is an argument, and options may follow it, except with ``rest`` (``run``, and the
    group before its COMMAND): the first argument and everything after it are arguments, options
    or not. Then, as click did, ``--help``
    (and the group's ``--version``) act before anything is checked, and the values are checked
    in the order their options were first given, then the arguments, then what was left out."""

    def __init__(self, prog: str, description: str | None, arguments: Sequence[str] = (), *,
                 types: dict[str, Callable[[str], Any]] | None = None, rest: str | None = None,
                 usage: str | None = None) -> None:
        usage = usage or " ".join(["%(prog)s [OPTIONS]", *(name.upper() for name in arguments),
                                   *([f"[{rest.upper()}]..."] if rest else [])])
        super().__init__(prog=prog, usage=usage, description=description, add_help=False, allow_abbrev=False,
                         formatter_class=_Formatter)
        self.arguments, self.types, self.rest = list(arguments), types or {}, rest
        self.options: list[argparse.Action] = []
        self.kinds: dict[argparse.Action, str] = {}
        self.eager: dict[str, Callable[[], None]] = {"help": self.show_help}
        self._options = self.add_argument_group("Options")

    def option(self, *names: str, show_default: bool = False, **kwargs: Any) -> None:
        """``add_argument``, noting its kind and adding the help's ``[default: ...; x>=N; required]``."""
        if kwargs.get("action", "store") in ("store", "append"):
            kwargs.setdefault("metavar", "TEXT")
        action = self._options.add_argument(*names, **kwargs)
        extra = [f"default: {action.default}"] if show_default else []
        if isinstance(action.type, _Number) and action.type.low is not None:
            extra.append(action.type.bounds())
        if action.required:
            extra.append("required")
        if extra:
            action.help = f"{action.help}  [{'; '.join(extra)}]"
        self.options.append(action)
        self.kinds[action] = kwargs.get("action", "store")

    def add_help_option(self) -> None:
        self.option("-h", "--help", action="store_true", help="Show this message and exit.")

    def error(self, message: str) -> Any:  # argparse's own errors, were any raised, as ours
        raise CommandLineError(message, self)

    def show_help(self) -> None:
        _out(self.format_help().rstrip("\n"))
        sys.exit(0)

    def parse(self, args: Sequence[str]) -> dict[str, Any]:
        """The values of a command line (``dest`` -> value), by the rules above."""
        given, words = self._read(list(args))
        for action, _ in given:
            if action.dest in self.eager:
                self.eager[action.dest]()
        values: dict[str, Any] = {}
        seen: dict[argparse.Action, list[str | None]] = {}
        for action, value in given:
            seen.setdefault(action, []).append(value)
        for action, texts in seen.items():
            values[action.dest] = self._value(action, texts)
        for name in self.arguments:
            if not words:
                raise CommandLineError(f"Missing argument {name.upper()!r}.", self)
            values[name] = self._convert(words.pop(0), repr(name.upper()), self.types.get(name), None)
        if self.rest:
            values[self.rest], words = tuple(words), []
        for action in self.options:
            if action not in seen:
                if action.required:
                    raise CommandLineError(f"Missing option {self._hint(action)}.", self)
                values[action.dest] = () if self.kinds[action] == "append" else action.default
        if words:
            raise CommandLineError(f"Got unexpected extra argument{'s' if len(words) > 1 else ''} ({' '.join(words)})",
                              self)
        for dest in self.eager:
            values.pop(dest, None)
        return values

    def _read(self, args: list[str]) -> tuple[list[tuple[argparse.Action, str | None]], list[str]]:
        """The options given, (option, its value or None), in order; the arguments."""
        long = {name: a for a in self.options for name in a.option_strings if not _is_short(name)}
        short = {name: a for a in self.options for name in a.option_strings if _is_short(name)}
        given: list[tuple[argparse.Action, str | None]] = []
        words: list[str] = []
        while args:
            arg = args.pop(0)
            if arg == "--":
                break
            if arg[:1] != "-" or arg == "-":
                words.append(arg)
                if self.rest:
                    break
                continue
            name, eq, value = arg.partition("=")
            if name in long:
                action = long[name]
                if action.nargs == 0 and eq:
                    raise CommandLineError(f"Option {name!r} does not take a value.", self)
                given.append((action, None if action.nargs == 0 else value if eq else self._next(name, args)))
            elif arg.startswith("--"):
                raise CommandLineError(f"No such option {name!r}.{_suggest(name, long)}", self)
            else:  # short options: -v, -vv, -oFILE, -o FILE
                for i, letter in enumerate(arg[1:], 2):
                    name = f"-{letter}"
                    if name not in short:
                        raise CommandLineError(f"No such option {name!r}.", self)
                    action = short[name]
                    if action.nargs == 0:
                        given.append((action, None))
                        continue
                    given.append((action, arg[i:] if i < len(arg) else self._next(name, args)))
                    break
        return given, words + args

    def _next(self, name: str, args: list[str]) -> str:
        if not args:
            raise CommandLineError(f"Option {name!r} requires an argument.", self)
        return args.pop(0)

    def _value(self, action: argparse.Action, texts: list[str | None]) -> Any:
        kind = self.kinds[action]
        if kind == "count":
            return len(texts)
        if kind == "store_true":
            return True
        if kind == "append":
            return tuple(self._convert(t, self._hint(action), action.type, action.choices) for t in texts)
        return self._convert(texts[-1], self._hint(action), action.type, action.choices)

    def _convert(self, text: Any, hint: str, convert: Any, choices: Any) -> Any:
        if choices is not None and text not in choices:
            raise CommandLineError(f"Invalid value for {hint}: {text!r} is not one of "
                              f"{', '.join(repr(c) for c in choices)}.", self)
        try:
            return text if convert is None else convert(text)
        except ValueError as e:
            raise CommandLineError(f"Invalid value for {hint}: {e}", self) from None

    @staticmethod
    def _hint(action: argparse.Action) -> str:
        return " / ".join(repr(name) for name in action.option_strings)


def _is_short(name: str) -> bool:
    return len(name) == 2 and name[0] == "-" and name[1] != "-"


def _suggest(name: str, possible: Any) -> str:
    """`` Did you mean '--engine'?`` for a misspelt name, or nothing."""
    from difflib import get_close_matches

    close = sorted(get_close_matches(name, possible))
    if not close:
        return ""
    named = ", ".join(repr(c) for c in close)
    return f" Did you mean {named}?" if len(close) == 1 else f" (Did you mean one of: {named}?)"


class _Group(_Parser):
    """``wasmig [OPTIONS] COMMAND [ARGS]...``: its help lists the commands."""

    def format_help(self) -> str:
        width = _help_width()
        names = sorted(COMMANDS)
        widest = max(map(len, names))
        rows = [f"  {name:<{widest}}  {_summary(COMMANDS[name].function.__doc__ or '', width - 6 - widest)}"
                for name in names]
        return super().format_help() + "\nCommands:\n" + "\n".join(rows) + "\n"


def _summary(doc: str, limit: int) -> str:
    """A command's line in the list: the first sentence of its description, cut to ``limit``."""
    words = doc.partition("\n\n")[0].split()
    for i, word in enumerate(words):  # a period followed by a lower-case word is an abbreviation's
        if word.endswith(".") and (i == len(words) - 1 or not words[i + 1][0].islower()):
            words = words[:i + 1]
            break
    text = " ".join(words)
    if len(text) <= limit:
        return text
    import textwrap

    return textwrap.shorten(text, limit, placeholder="...", break_on_hyphens=False)


class _Command:
    def __init__(self, function: Callable[..., None], options: Callable[[_Parser], None] | None,
                 arguments: Sequence[str], types: dict[str, Callable[[str], Any]] | None, rest: str | None) -> None:
        self.function, self.options, self.arguments, self.types, self.rest = function, options, arguments, types, rest

    def parser(self, prog: str) -> _Parser:
        """Built when the command runs (only its own)."""
        parser = _Parser(prog, self.function.__doc__, self.arguments, types=self.types, rest=self.rest)
        if self.options is not None:
            self.options(parser)
        parser.add_help_option()
        return parser


COMMANDS: dict[str, _Command] = {}


def command(name: str, options: Callable[[_Parser], None] | None, *arguments: str,
            types: dict[str, Callable[[str], Any]] | None = None, rest: str | None = None) -> Any:
    """Register the function as the command ``name``: ``options(parser)`` declares its options,
    ``arguments`` its arguments (the parameter names; ``types`` converts some), ``rest`` the
    parameter that takes the arguments after them (and the options among them)."""

    def register(function: Callable[..., None]) -> Callable[..., None]:
        COMMANDS[name] = _Command(function, options, arguments, types, rest)
        return function

    return register


def _group_parser(prog: str) -> _Group:
    parser = _Group(prog, "Checkpoint, restore and live-migrate running WebAssembly (WASI) programs.", rest="args",
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
    the process's arguments) and exits with the command's exit code; a usage error exits with 2."""
    if argv is None:
        argv = sys.argv[1:]
        script = os.path.basename(sys.argv[0])
        prog = "python -m wasmig" if script == "__main__.py" else script or "wasmig"
    else:
        prog = "wasmig"
    try:
        dispatch(prog, list(argv))
    except CommandLineError as e:
        _err(e.report())
        sys.exit(2)
    except (EOFError, KeyboardInterrupt):  # as click reported them (a run's own Ctrl-C exits with 130)
        _err("\nAborted!")
        sys.exit(1)
    except BrokenPipeError:  # stdout's reader went away (`wasmig inspect ... | head`): quietly
        sys.stdout, sys.stderr = _Unflushed(sys.stdout), _Unflushed(sys.stderr)
        sys.exit(1)
    sys.exit(0)


def dispatch(prog: str, argv: list[str]) -> None:
    """Parse ``argv`` (the group's options, the command, its options and arguments) and run the command."""
    group = _group_parser(prog)
    if not argv:
        _err(group.format_help().rstrip("\n"))
        sys.exit(2)
    options = group.parse(argv)
    if not options["args"]:
        raise CommandLineError("Missing command.", group)
    name, *args = options["args"]
    if name not in COMMANDS:
        if name[:1] == "-" and name != "-":  # after `--`: an option, as click reported it
            group.parse(options["args"])
        raise CommandLineError(f"No such command {name!r}.{_suggest(name, COMMANDS)}", group)
    verbose, level = options["verbose"], os.environ.get("WASMIG_LOG")
    if verbose or level:
        from wasmig import log

        problem = log.configure(verbose, level)
        if problem is not None:
            _err(f"wasmig: warning: {problem}")
    found = COMMANDS[name]
    found.function(**found.parser(f"{prog} {name}").parse(args))


class _Unflushed:
    """A stream whose reader went away: the flush at exit fails quietly."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def checkpoint_options(parser: _Parser) -> None:
    """The checkpoint options shared by ``run`` and ``restore``."""
    parser.option("--checkpoint-dir", type=_Path(directory=True), default=None, metavar="DIRECTORY",
                  help="Write snapshots here (several snapshots of one run share its page store).")
    parser.option("--checkpoint-at-step", type=_Number(int, 1), default=None, metavar="N",
                  help="Checkpoint at the N-th stable point (function entries + loop entries); engine-neutral.")
    parser.option("--checkpoint-at-instruction", type=_Number(int, 0), default=None, metavar="N",
                  help="Checkpoint after exactly N instructions (interpreter only).")
    parser.option("--checkpoint-every", type=_Number(float, 0.001), default=None, metavar="SECONDS",
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


def make_policy(checkpoint_dir: str | None, at_step: int | None, at_instruction: int | None, every: float | None,
                then: str, stable_only: bool, count_steps: bool = False, migratable: bool = False) -> Any:
    from pathlib import Path

    from wasmig.snapshot.policy import CheckpointPolicy

    if checkpoint_dir is None and (at_step is not None or at_instruction is not None or every is not None):
        raise UserError("--checkpoint-at-step/--checkpoint-at-instruction/--checkpoint-every need --checkpoint-dir")
    # refused now, before the program runs, rather than a warning at every checkpoint it takes
    if checkpoint_dir is not None:
        check_writable_dir(checkpoint_dir, "--checkpoint-dir")
        from wasmig.snapshot.signing import own_key_pair

        # the signing key (and the cryptography package) loaded, or made and announced, now: not
        # inside the first checkpoint's pause, nor amid the program's output
        own_key_pair()
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
        _err(f"wasmig: warning: --checkpoint-at-step {at_step} was never reached (the program ended at step "
             f"{steps})")
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


def migrate_later(session: Any, target: str, identity: Any, after: float) -> None:
    """``--migrate-to``: move the program ``after`` seconds into the run (a thread of its own);
    the summary, or why it stayed, goes to stderr."""
    import threading

    from wasmig.migrate.protocol import MigrationError
    from wasmig.migrate.source import migrate

    def move() -> None:
        try:
            migrate(session, target, identity, on_done=lambda r: _err(f"wasmig: {r.summary()}"))
        except MigrationError as e:
            _err(f"wasmig: warning: migration to {target} failed, the program goes on here: {e}")

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
        _err(f"wasmig: checkpoint written to {policy.written[-1]}; exiting")
        return 0
    except MigrationInDoubt as e:
        _err(f"wasmig: error: {e.why}; its state is in {e.path}: restore it with `wasmig restore --module "
             f"PROGRAM.wasm {e.path}` if it does not run on the target")
        return 75
    except MigratedAway:
        _err("wasmig: the program moved to another machine; exiting")
        return 0
    except Trap as trap:
        report_trap(trap)
        return TRAP_EXIT_CODE
    except SnapshotError as e:
        _fail(str(e))
    except (DecodeError, ValidationError) as e:  # found late: validation waits for the instrumentation pass
        _fail(module_problem(module_path or "program", e))
    except WasmError as e:
        _fail(f"{module_path or 'program'}: {e}")
    except KeyboardInterrupt:
        return 130
    finally:
        wasi.close()
    return ERROR_EXIT_CODE


def run_checkpointable(module: Any, wasi: Any, policy: Any, module_path: str | None, snapshot: Any = None,
                       pages: Any = None) -> int:
    """A run (or, with ``snapshot``, a restore) on wasmtime with checkpoints: the instrumented module
    in a worker thread, signals and timers in this one. ``pages``: the snapshot's memories when it
    was read without them (:func:`wasmig.snapshot.store.load_snapshot_deferred`)."""
    import time

    from wasmig import log
    from wasmig.snapshot.wasmtime_session import Checkpointable, WasmtimeSession

    def body() -> int:
        started = time.perf_counter()
        # a module not instrumented before is announced on stderr, with progress (minutes for a big one)
        runner = Checkpointable(module, wasi, count_steps=policy.count_steps,
                                announce=os.path.basename(module_path) if module_path else "the module")
        if snapshot is not None:
            runner.load(snapshot, pages=pages)
            log.info(__name__, "restore: instrumented module instantiated and state loaded on wasmtime in %.3f s",
                     time.perf_counter() - started)
            if pages is not None:
                log.info(__name__, "restore: %d of %d pages of memory read and written, the rest held already",
                         runner.pages_written, sum(map(len, pages)))
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
        _out(line)
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


def run_options(p: _Parser) -> None:
    p.option("--engine", choices=ENGINES, default=None, metavar="[interp|wasmtime]",
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
             help="Run so that `wasmig migrate PID` can move it (on wasmtime: the checkpointable variant).")
    p.option("--gateway", dest="gateway_address", default=None, metavar="HOST:PORT",
             help="Preopen a listening socket held by `wasmig gateway` (its control address), after the "
                  "--tcplisten ones: its connections survive migrations.")
    p.option("--gateway-fingerprint", default=(), action="append", metavar="FP|PUBFILE",
             help="The gateway's key (sha256:... fingerprint, or its wasmig.pub): needed with --gateway.")
    p.option("--migrate-to", default=None, metavar="HOST:PORT",
             help="Move the program to this `wasmig serve` daemon once it ran --migrate-after seconds.")
    p.option("--migrate-peer-fingerprint", default=(), action="append", metavar="FP|PUBFILE",
             help="The daemon's key (sha256:... fingerprint, or its wasmig.pub): needed with --migrate-to.")
    p.option("--migrate-token-file", default=None, type=_Path(directory=False), metavar="FILE",
             help="A shared secret the daemon also requires (optional second factor, mode 600).")
    p.option("--key", dest="key_dir", default=None, type=_Path(directory=True), metavar="DIRECTORY",
             help="This run's key pair, shown to gateways and migration targets (default: the user's, "
                  "made on first use).")
    p.option("--migrate-after", type=_Number(float, 0), default=0.0, show_default=True, metavar="SECONDS",
             help="When --migrate-to moves the program.")
    checkpoint_options(p)


@command("run", run_options, "program", rest="args")
def run(engine: str | None, invoke: str | None, dirs: tuple[str, ...], envs: tuple[str, ...], listens: tuple[str, ...],
        migratable: bool, gateway_address: str | None, gateway_fingerprint: tuple[str, ...], migrate_to: str | None,
        migrate_peer_fingerprint: tuple[str, ...], migrate_token_file: str | None, key_dir: str | None,
        migrate_after: float,
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
            identity = peer_identity(migrate_to, "--migrate-to", key_dir, migrate_peer_fingerprint,
                                     "--migrate-peer-fingerprint", migrate_token_file)
            policy.migrate_to = (migrate_to, identity, migrate_after)
        listeners = [open_listener(spec) for spec in listens]
        gateways = ([] if gateway_address is None
                    else [register_with_gateway(gateway_address, key_dir, gateway_fingerprint)])
        # wasmtime validates and compiles the module itself: Python decodes only what linking needs
        # (the instrumented one: decoding and validation wait until the pass needs them, which a
        # cached instrumented module spares, as on restore; the checkpoint code reads the module's
        # cached facts, wasmig.binary.facts)
        module = Module.from_file(program, decode=engine != "wasmtime", validate=engine != "wasmtime")
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


def restore_options(p: _Parser) -> None:
    p.option("--engine", choices=ENGINES, default=None, metavar="[interp|wasmtime]",
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
    p.option("--max-memory", type=_size, default=None, metavar="SIZE",
             help="Refuse a snapshot whose memory is larger (e.g. 2G; default 1G), before reading it.")
    checkpoint_options(p)


def _size(text: str) -> int:
    from wasmig.snapshot.limits import parse_size

    return parse_size(text)


def trust_options(p: _Parser, verb: str) -> None:
    """``--trust`` and ``--allow-unsigned``, as ``restore`` and ``inspect --verify`` take them."""
    p.option("--trust", dest="trust_files", action="append", metavar="KEYFILE",
             help=f"{verb} snapshots signed by this public key (a wasmig.pub) too, besides your own.")
    p.option("--allow-unsigned", action="store_true",
             help=f"{verb} a snapshot that is unsigned or signed by a key not trusted (with a warning); it still "
                  "gets only the host resources granted here.")


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
    from pathlib import Path

    from wasmig import log
    from wasmig.grants import GrantError, resolve
    from wasmig.snapshot.admission import admit, trust_from_options
    from wasmig.snapshot.limits import check_module_maximum
    from wasmig.snapshot.session import find_module_for
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import load_snapshot_deferred, materialize

    try:
        mapping = {}
        for d in dirs:
            host, guest = parse_dir(d)
            mapping[guest] = host
        for spec in listens:
            check_listen_address(spec)
        policy = make_policy(checkpoint_dir, checkpoint_at_step, checkpoint_at_instruction, checkpoint_every,
                             checkpoint_then, stable_only, count_steps)
        check_module_option(module_path)
        started = time.perf_counter()
        # the seal and the memory's size, from the manifest alone; then the manifest that was checked
        # (only it: the memory's pages are read as they are written into the new instance)
        admitted = admit(snapshot, trust_from_options(trust_files, allow_unsigned), max_memory)
        snap, pages = load_snapshot_deferred(admitted.file, expect=admitted.checksum)
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
        engine = pick_engine(engine, interp_only=checkpoint_at_instruction is not None or not snap.stable)
        # on wasmtime, validation waits until the instrumentation pass needs it, which a cached
        # instrumented module spares (a restore's largest cost for a small module)
        started = time.perf_counter()
        module = find_module_for(Path(snapshot), snap, module_path, validate=engine != "wasmtime",
                                 decode=engine != "wasmtime")
        log.info(__name__, "restore: module found and read in %.3f s", time.perf_counter() - started)
        if snap.wasi is None:
            raise SnapshotError("the snapshot has no WASI state: it is not of a WASI program")
        granted = resolve(snap.wasi, dirs=mapping, listens=listens, gateways=gateways,
                          reuse_recorded=admitted.verdict.own)
        if engine == "wasmtime":
            from wasmig.wasi.snapshot import restore_wasi

            wasi = restore_wasi(snap.wasi, granted=granted, on_file_change=on_file_change)
            sys.exit(run_checkpointable(module, wasi, policy, snap.meta.get("module_path"), snap, pages) & 0xFF)
        from wasmig.snapshot.api import restore as restore_instance  # the interpreter's: imported for it alone

        started = time.perf_counter()
        check_module_maximum([len(p) for p in pages] if pages is not None else
                             [len(m.data) // 65536 for m in snap.memories], module.ir)
        materialize(snap, pages)
        instance = restore_instance(snap, engine, module=module, granted=granted, on_file_change=on_file_change)
        log.info(__name__, "restore: state restored on the interpreter in %.3f s", time.perf_counter() - started)
    except (UserError, GrantError) as e:
        _fail(str(e))
        return
    except (SnapshotError, DecodeError, ValidationError, LinkError) as e:
        _fail(_about(snapshot, e))
        return
    code = run_session(instance, instance.wasi, policy, snap.meta.get("module_path"), resume=True)
    sys.exit(code & 0xFF)


def checkpoint_cmd_options(p: _Parser) -> None:
    p.option("--timeout", type=_Number(float), default=30.0, show_default=True, metavar="FLOAT",
             help="Seconds to wait for the snapshot.")


@command("checkpoint", checkpoint_cmd_options, "pid", types={"pid": _Number(int)})
def checkpoint_cmd(timeout: float, pid: int) -> None:
    """Ask a running `wasmig run --checkpoint-dir ...` (process PID) for a snapshot now."""
    from wasmig.snapshot.session import wait_for_snapshot
    from wasmig.snapshot.state import SnapshotError

    try:
        path = wait_for_snapshot(pid, timeout)
    except SnapshotError as e:
        _fail(str(e))
        return
    _out(str(path))


def inspect_options(p: _Parser) -> None:
    p.option("--json", dest="as_json", action="store_true", help="Machine-readable output.")
    p.option("--module", dest="module_path", default=None, help="The .wasm, for function names.")
    p.option("--verify", action="store_true",
             help="Fail (exit 1) unless the snapshot is signed by your own key or one given with --trust.")
    p.option("--trust", dest="trust_files", action="append", metavar="KEYFILE",
             help="Trust snapshots signed by this public key (a wasmig.pub) too, besides your own.")
    p.option("--max-memory", type=_size, default=None, metavar="SIZE",
             help="Refuse a snapshot whose memory is larger (e.g. 2G; default 1G), before reading it.")


@command("inspect", inspect_options, "snapshot")
def inspect(as_json: bool, module_path: str | None, verify: bool, trust_files: tuple[str, ...],
            max_memory: int | None, snapshot: str) -> None:
    """Summarise a snapshot: who signed it, the host resources a restore would need, call stack,
    memory, open files."""
    import json
    from pathlib import Path

    from wasmig.grants import needed
    from wasmig.snapshot.admission import trust_from_options
    from wasmig.snapshot.inspect import format_summary, summarize
    from wasmig.snapshot.limits import check_manifest_memory
    from wasmig.snapshot.session import find_module_for
    from wasmig.snapshot.signing import check_trust, describe
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import checkpoint_chain, load_snapshot, read_sealed, storage_stats

    try:
        trust = trust_from_options(trust_files, allow_unsigned=False)
        file, container = read_sealed(snapshot)
        if verify:
            check_trust(snapshot, container.seal, trust)
        check_manifest_memory(container.manifest, max_memory)
        snap = load_snapshot(file, expect=container.checksum)
        stats = storage_stats(file)
        chain = checkpoint_chain(file)
    except SnapshotError as e:
        _fail(_about(snapshot, e))
        return
    try:
        ir = find_module_for(Path(snapshot), snap, module_path).ir
    except (SnapshotError, WasmError):
        ir = None
    summary = summarize(snap, ir, stats, chain)
    seal = container.seal
    summary["signature"] = {"signer": seal.signer.fingerprint if seal is not None else None,
                            "valid": seal.valid() if seal is not None else None,
                            "trusted": bool(seal is not None and seal.valid() and trust.trusted(seal.signer)),
                            "own_key": bool(seal is not None and seal.valid() and trust.is_own(seal.signer)),
                            "description": describe(seal, trust)}
    summary["host_resources"] = [vars(r) for r in needed(snap.wasi)] if snap.wasi is not None else []
    _out(json.dumps(summary, indent=2) if as_json else format_summary(summary))


def keygen_options(p: _Parser) -> None:
    p.option("--dir", dest="directory", default=None, metavar="DIRECTORY",
             help="Where to write wasmig.key (0600) and wasmig.pub (default: $WASMIG_KEY_DIR, else "
                  "$XDG_CONFIG_HOME/wasmig or ~/.config/wasmig).")
    p.option("--force", action="store_true",
             help="Replace an existing key pair (what the old key signed is then trusted only with --trust on "
                  "a copy of its old wasmig.pub).")


@command("keygen", keygen_options)
def keygen(directory: str | None, force: bool) -> None:
    """Make your Ed25519 key pair: it signs the snapshots you write, and restore trusts what it signed.
    Prints its fingerprint and the public key file to hand to other machines (--trust)."""
    import getpass
    import socket
    from pathlib import Path

    from wasmig.keys import PUBLIC_NAME, KeyFileError, KeyPair, write_key_pair

    pair = KeyPair.generate(comment=f"{getpass.getuser()}@{socket.gethostname()}")
    try:
        where = write_key_pair(pair, Path(directory) if directory else None, force=force)
    except KeyFileError as e:
        _fail(str(e))
        return
    except OSError as e:
        _fail(f"cannot write the key pair: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""))
        return
    _out(pair.fingerprint)
    _out(f"public key: {where / PUBLIC_NAME}")


def gc_options(p: _Parser) -> None:
    p.option("--dry-run", action="store_true", help="Only report what would be removed.")


@command("gc", gc_options, "directory")
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
    _out(f"{directory}: {stats['snapshots']} snapshots, {stats['pages_kept']} pages kept; {verb} "
         f"{stats['pages_removed']} unreferenced pages ({stats['bytes_removed']} bytes)"
         + (f" and {stats['temp_files_removed']} stale temporary files" if stats["temp_files_removed"] else ""))


def diff_options(p: _Parser) -> None:
    p.option("--json", dest="as_json", action="store_true", help="Machine-readable output.")


@command("diff", diff_options, "a", "b")
def diff(as_json: bool, a: str, b: str) -> None:
    """List what changed between two snapshots. Exit status as diff(1)'s: 0 when they hold the same
    state, 1 when they differ, 2 on trouble."""
    import json

    from wasmig.snapshot.inspect import diff as diff_snapshots
    from wasmig.snapshot.limits import check_manifest_memory
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import load_snapshot, read_sealed

    def load(path: str) -> Any:  # within the default memory limit, checked before a page is read
        file, container = read_sealed(path)
        try:
            check_manifest_memory(container.manifest, None)
        except SnapshotError as e:
            raise SnapshotError(f"{path}: {e}") from None
        return load_snapshot(file, expect=container.checksum)

    try:
        snaps = [load(a), load(b)]
    except SnapshotError as e:
        _fail(str(e), DIFF_TROUBLE_EXIT_CODE)
        return
    lines = diff_snapshots(*snaps)
    if as_json:
        _out(json.dumps({"a": a, "b": b, "same": not lines, "differences": lines}, indent=2))
    else:
        for line in lines:
            _out(line)
    sys.exit(DIFF_DIFFERENT_EXIT_CODE if lines else 0)


def serve_options(p: _Parser) -> None:
    p.option("--listen", required=True, metavar="HOST:PORT", help="Where to accept migrations.")
    p.option("--trust-peer", dest="trust_peers", action="append", default=(), metavar="FP|PUBFILE",
             help="A source allowed to migrate here: its key's sha256:... fingerprint, or its wasmig.pub "
                  "(repeat for more; at least one).")
    p.option("--key", dest="key_dir", default=None, type=_Path(directory=True), metavar="DIRECTORY",
             help="This daemon's key pair (default: the user's, made on first use); sources pin its fingerprint.")
    p.option("--token-file", default=None, type=_Path(directory=False), metavar="FILE",
             help="Also require this shared secret (optional second factor: at least 16 bytes, mode 600).")
    p.option("--dir", dest="dirs", action="append", metavar="HOST::GUEST",
             help="Map a migrated program's preopened guest directory GUEST to host directory HOST here.")
    p.option("--engine", choices=ENGINES, default=None, metavar="[interp|wasmtime]",
             help="The engine migrated programs run on here (default: wasmtime when installed).")
    p.option("--state-dir", type=_Path(directory=True), default=None, metavar="DIRECTORY",
             help="Where received modules and pages are cached (default: ~/.cache/wasmig/serve).")
    p.option("--page-cache-mb", type=_Number(int, 0), default=2048, show_default=True, metavar="INTEGER RANGE",
             help="Keep at most this much of earlier migrations' pages (trimmed when the daemon starts).")
    p.option("--tcplisten", dest="listens", action="append", metavar="HOST:PORT",
             help="Grant a migrated program's listening sockets these addresses, in fd order (none by default).")
    p.option("--gateway", dest="gateways", action="append", metavar="HOST:PORT",
             help="Let migrated programs re-attach to the socket gateway at this control address.")


@command("serve", serve_options)
def serve(listen: str, trust_peers: tuple[str, ...], key_dir: str | None, token_file: str | None,
          dirs: tuple[str, ...], engine: str | None, state_dir: str | None, page_cache_mb: int,
          listens: tuple[str, ...], gateways: tuple[str, ...]) -> None:
    """Receive migrating programs, restore them and run them here."""
    from pathlib import Path

    from wasmig.migrate.channel import identity_from_options
    from wasmig.migrate.protocol import parse_address, read_token
    from wasmig.migrate.target import serve as serve_forever
    from wasmig.wasi.gateway import use_key

    try:
        host, port = parse_address(listen, "--listen")
        mapping = {guest: host_dir for host_dir, guest in map(parse_dir, dirs)}
        for spec in listens:
            check_listen_address(spec)
        engine = pick_engine(engine, interp_only=False)
        state = Path(state_dir) if state_dir else Path.home() / ".cache" / "wasmig" / "serve"
        token = read_token(token_file) if token_file else None
        if not trust_peers:
            raise UserError("serve needs --trust-peer (the key fingerprint, or wasmig.pub, of each source allowed)")
        sock = open_listener(f"{host}:{port}")
        identity = identity_from_options(key_dir, trust_peers, token)
        use_key(identity.pair)  # the programs it runs show the daemon's key to their gateways
    except (UserError, WasmError) as e:
        _fail(str(e).replace("--tcplisten", "--listen"))
        return
    try:
        serve_forever(sock, identity, engine=engine, dirs=mapping, state_dir=state, page_cache_mb=page_cache_mb,
                      listens=listens, gateways=gateways)
    except KeyboardInterrupt:
        sys.exit(130)


def migrate_cmd_options(p: _Parser) -> None:
    p.option("--to", required=True, metavar="HOST:PORT", help="The `wasmig serve` daemon to move to.")
    p.option("--peer-fingerprint", dest="peers", action="append", default=(), metavar="FP|PUBFILE",
             help="The daemon's key: its sha256:... fingerprint, or its wasmig.pub (required).")
    p.option("--key", dest="key_dir", default=None, type=_Path(directory=True), metavar="DIRECTORY",
             help="The key pair the program shows the daemon (default: the user's).")
    p.option("--token-file", default=None, type=_Path(directory=False), metavar="FILE",
             help="A shared secret the daemon also requires (optional second factor).")
    p.option("--quiet", action="store_true", help="No progress bar, only the summary line.")
    p.option("--no-precopy", action="store_true",
             help="Stop the program at once and send everything while it is stopped.")


@command("migrate", migrate_cmd_options, "pid", types={"pid": _Number(int)})
def migrate_cmd(to: str, peers: tuple[str, ...], key_dir: str | None, token_file: str | None, quiet: bool,
                no_precopy: bool, pid: int) -> None:
    """Move the running `wasmig run --migratable` process PID to another machine."""
    from wasmig.migrate.channel import parse_peers
    from wasmig.migrate.control import request_migration
    from wasmig.migrate.progress import ProgressView
    from wasmig.migrate.protocol import MigrationError, parse_address, read_token

    try:
        parse_address(to, "--to")
        if len(peers) != 1:
            raise MigrationError("migrate needs one --peer-fingerprint: the daemon's key fingerprint (sha256:...) "
                                 "or its wasmig.pub")
        (peer,) = parse_peers(peers)
        if token_file:
            read_token(token_file)  # refused here, with its reason, rather than by the run
        messages = request_migration(pid, to, peer, key_dir=key_dir, token_file=token_file, precopy=not no_precopy)
        with ProgressView(enabled=not quiet) as view:
            for msg in messages:
                if "progress" in msg:
                    view.update(msg["progress"])
                elif "done" in msg:
                    view.finish()
                    _out(f"wasmig: {msg['done']['summary']}")
                    return
                elif "error" in msg and msg.get("stopped"):
                    raise MigrationError(f"migration in doubt, the program stopped in process {pid}: {msg['error']}")
                elif "error" in msg:
                    raise MigrationError(f"migration failed, the program goes on in process {pid}: {msg['error']}")
        raise MigrationError(f"process {pid} ended the request without an answer")
    except WasmError as e:
        _fail(str(e))


def gateway_options(p: _Parser) -> None:
    p.option("--listen", required=True, metavar="HOST:PORT", help="Where clients connect.")
    p.option("--control", required=True, metavar="HOST:PORT",
             help="Where programs (`wasmig run --gateway`) register and attach their connections.")
    p.option("--trust-peer", dest="trust_peers", action="append", default=(), metavar="FP|PUBFILE",
             help="A key allowed to run the program behind this gateway: the machine it starts on and every "
                  "daemon it may migrate to (a sha256:... fingerprint, or a wasmig.pub; at least one).")
    p.option("--key", dest="key_dir", default=None, type=_Path(directory=True), metavar="DIRECTORY",
             help="The gateway's key pair (default: the user's, made on first use); programs pin its fingerprint.")
    p.option("--token-file", default=None, type=_Path(directory=False), metavar="FILE",
             help="Also require this shared secret (optional second factor: at least 16 bytes, mode 600).")


@command("gateway", gateway_options)
def gateway(listen: str, control: str, trust_peers: tuple[str, ...], key_dir: str | None,
            token_file: str | None) -> None:
    """Front a program's listening socket, so its TCP connections survive its migrations."""
    from wasmig.migrate.channel import identity_from_options
    from wasmig.migrate.gateway import Gateway, log
    from wasmig.migrate.protocol import read_token

    try:
        if not trust_peers:
            raise UserError("gateway needs --trust-peer (the key of each machine the program may run on)")
        token = read_token(token_file) if token_file else None
        public = open_listener(listen)
        ctl = open_listener(control)
        identity = identity_from_options(key_dir, trust_peers, token)
    except (UserError, WasmError) as e:
        _fail(str(e).replace("--tcplisten", "--listen/--control"))
        return
    log(f"clients on {listen}, programs on {control} (key {identity.fingerprint})")
    try:
        Gateway(public, ctl, identity).serve()
    except KeyboardInterrupt:
        sys.exit(130)


def export_cmd_options(p: _Parser) -> None:
    p.option("-o", "--output", required=True, metavar="FILE.wsnap", help="The file to write.")
    p.option("--module", dest="module_path", default=None,
             help="The .wasm the snapshot was taken of (default: the copy kept in the checkpoint directory).")
    p.option("--force", action="store_true", help="Replace FILE if it exists.")


@command("export", export_cmd_options, "snapshot")
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
    _err(f"wasmig: exported {result.snapshot} to {result.output} ({result.pages} pages, {result.bytes} bytes)")


@command("import", None, "file", "directory")
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
    _out(str(path))
