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

import click

from wasmig.errors import DecodeError, LinkError, Trap, ValidationError, WasmError

TRAP_EXIT_CODE = 134
ERROR_EXIT_CODE = 1


class UserError(Exception):
    """A problem with what the user asked for: reported as one line, exit code 1."""


def _fail(message: str, code: int = ERROR_EXIT_CODE) -> None:
    click.echo(f"wasmig: error: {message}", err=True)
    sys.exit(code)


def parse_dir(spec: str) -> tuple[str, str]:
    """``HOST[::GUEST]`` -> (host, guest); the guest name defaults to HOST as written."""
    host, sep, guest = spec.partition("::")
    if not host or (sep and not guest):
        raise UserError(f"bad --dir {spec!r}: expected HOST or HOST::GUEST")
    if not os.path.isdir(host):
        raise UserError(f"--dir {host!r}: not a directory")
    return host, guest if sep else host


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
    host, sep, port_text = spec.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UserError(f"bad --tcplisten {spec!r}: expected HOST:PORT")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port_text)))
        sock.listen(128)
    except OSError as e:
        raise UserError(f"--tcplisten {spec}: {e.strerror or e}") from None
    return sock


def report_trap(trap: Trap) -> None:
    click.echo(f"Error: wasm trap: {trap.reason}", err=True)
    if trap.backtrace:
        click.echo("wasm backtrace:", err=True)
        for i, line in enumerate(trap.backtrace):
            click.echo(f"  {i:>3}: {line}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wasmig")
def main() -> None:
    """Checkpoint, restore and live-migrate running WebAssembly (WASI) programs."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--engine", type=click.Choice(["interp"]), default="interp", show_default=True,
              help="Execution engine.")
@click.option("--dir", "dirs", multiple=True, metavar="HOST[::GUEST]",
              help="Preopen a host directory, optionally under another guest name.")
@click.option("--env", "envs", multiple=True, metavar="NAME[=VALUE]", help="Set (or inherit) an environment variable.")
@click.option("--tcplisten", "listens", multiple=True, metavar="HOST:PORT",
              help="Preopen a listening TCP socket (fds 3, 4, ... before the directories).")
@click.argument("program")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(engine: str, dirs: tuple[str, ...], envs: tuple[str, ...], listens: tuple[str, ...], program: str,
        args: tuple[str, ...]) -> None:
    """Run a WASI program: PROGRAM.wasm [ARGS...]."""
    from wasmig.module import Module
    from wasmig.wasi.preview1 import Wasi
    from wasmig.wasi.run import run_command

    listeners: list[socket.socket] = []
    try:
        if os.path.isdir(program):
            raise UserError(f"{program}: is a directory, not a WebAssembly module")
        preopens = [parse_dir(d) for d in dirs]
        env = parse_env(envs)
        listeners = [open_listener(spec) for spec in listens]
        module = Module.from_file(program)
    except UserError as e:
        for sock in listeners:
            sock.close()
        _fail(str(e))
        return
    except (DecodeError, ValidationError) as e:
        kind = "cannot read" if "cannot read module" in str(e) else "not a valid WebAssembly module"
        _fail(f"{program}: {kind}: {str(e).replace(f'cannot read module {program}: ', '')}")
        return
    wasi = Wasi([program, *args], env, preopens=preopens, listeners=listeners)
    try:
        code = run_command(module, wasi, engine)
    except Trap as trap:
        report_trap(trap)
        code = TRAP_EXIT_CODE
    except LinkError as e:
        _fail(f"{program}: {e}")
        return
    except WasmError as e:
        _fail(f"{program}: {e}")
        return
    except KeyboardInterrupt:
        code = 130
    finally:
        wasi.close()
    sys.exit(code & 0xFF)
