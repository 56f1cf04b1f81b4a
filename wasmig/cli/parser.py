"""The command-line parser: each command's options declared with argparse (which also formats
``--help``), a command line read by :meth:`Parser.parse` with the rules of click (the library this
CLI was first written with, left for its start-up cost), and the table of commands."""

from __future__ import annotations

import argparse
import os
import sys

from wasmig.cli.output import out

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any, NoReturn


class CommandLineError(Exception):
    """A command line the parser refuses: usage, a hint and ``Error: MESSAGE`` on stderr, exit code 2."""

    def __init__(self, message: str, parser: Parser) -> None:
        super().__init__(message)
        self.parser = parser

    def report(self) -> str:
        return (f"{self.parser.format_usage()}Try '{self.parser.prog} --help' for help.\n\n"
                f"Error: {self}")


class Number:
    """An int or float option value, with optional bounds. A float must be finite: ``nan`` passes
    every comparison with a bound and ``inf`` reaches timers (``setitimer``) that cannot hold it."""

    def __init__(self, kind: type[int] | type[float], low: float | None = None, high: float | None = None) -> None:
        self.kind, self.low, self.high = kind, low, high

    def __call__(self, text: str) -> float:
        ranged = self.low is not None or self.high is not None
        name = ("integer" if self.kind is int else "float") + (" range" if ranged else "")
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid {name}.") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{text!r} is not a finite number.")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ValueError(f"{value} is not in the range {self.bounds()}.")
        return value

    def bounds(self) -> str:
        if self.high is None:
            return f"x>={self.low}"
        return f"x<={self.high}" if self.low is None else f"{self.low}<=x<={self.high}"


class PathOption:
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


def help_width() -> int:
    import shutil

    return max(min(shutil.get_terminal_size().columns, 80) - 2, 50)


class Formatter(argparse.HelpFormatter):
    """``--help`` laid out as click laid it out: ``Usage:``, the description's paragraphs indented,
    then ``Options:`` with ``-o, --output FILE`` and the help beside (``[default: ...]`` after it)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=help_width())

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


class Parser(argparse.ArgumentParser):
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
                         formatter_class=Formatter)
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
        if isinstance(action.type, Number) and (action.type.low is not None or action.type.high is not None):
            extra.append(action.type.bounds())
        if action.required:
            extra.append("required")
        if extra:
            action.help = f"{action.help}  [{'; '.join(extra)}]"
        self.options.append(action)
        self.kinds[action] = kwargs.get("action", "store")

    def add_help_option(self) -> None:
        self.option("-h", "--help", action="store_true", help="Show this message and exit.")

    def error(self, message: str) -> NoReturn:  # argparse's own errors, were any raised, as ours
        raise CommandLineError(message, self)

    def show_help(self) -> None:
        out(self.format_help().rstrip("\n"))
        sys.exit(0)

    def parse(self, args: Sequence[str]) -> dict[str, object]:
        """The values of a command line (``dest`` -> value), by the rules above."""
        given, words = self._read(list(args))
        for action, _ in given:
            if action.dest in self.eager:
                self.eager[action.dest]()
        values: dict[str, object] = {}
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
        long = {name: a for a in self.options for name in a.option_strings if not is_short(name)}
        short = {name: a for a in self.options for name in a.option_strings if is_short(name)}
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
                raise CommandLineError(f"No such option {name!r}.{suggest(name, long)}", self)
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


def is_short(name: str) -> bool:
    return len(name) == 2 and name[0] == "-" and name[1] != "-"


def suggest(name: str, possible: Iterable[str]) -> str:
    """`` Did you mean '--engine'?`` for a misspelt name, or nothing."""
    from difflib import get_close_matches

    close = sorted(get_close_matches(name, possible))
    if not close:
        return ""
    named = ", ".join(repr(c) for c in close)
    return f" Did you mean {named}?" if len(close) == 1 else f" (Did you mean one of: {named}?)"


class Group(Parser):
    """``wasmig [OPTIONS] COMMAND [ARGS]...``: its help lists the commands."""

    def format_help(self) -> str:
        width = help_width()
        names = sorted(COMMANDS)
        widest = max(map(len, names))
        rows = [f"  {name:<{widest}}  {summary(COMMANDS[name].function.__doc__ or '', width - 6 - widest)}"
                for name in names]
        return super().format_help() + "\nCommands:\n" + "\n".join(rows) + "\n"


def summary(doc: str, limit: int) -> str:
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


class Command:
    def __init__(self, function: Callable[..., None], options: Callable[[Parser], None] | None,
                 arguments: Sequence[str], types: dict[str, Callable[[str], Any]] | None, rest: str | None) -> None:
        self.function, self.options, self.arguments, self.types, self.rest = function, options, arguments, types, rest

    def parser(self, prog: str) -> Parser:
        """Built when the command runs (only its own)."""
        parser = Parser(prog, self.function.__doc__, self.arguments, types=self.types, rest=self.rest)
        if self.options is not None:
            self.options(parser)
        parser.add_help_option()
        return parser


COMMANDS: dict[str, Command] = {}


def command(name: str, options: Callable[[Parser], None] | None, *arguments: str,
            types: dict[str, Callable[[str], Any]] | None = None,
            rest: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register the function as the command ``name``: ``options(parser)`` declares its options,
    ``arguments`` its arguments (the parameter names; ``types`` converts some), ``rest`` the
    parameter that takes the arguments after them (and the options among them)."""

    def register(function: Callable[..., None]) -> Callable[..., None]:
        COMMANDS[name] = Command(function, options, arguments, types, rest)
        return function

    return register
