"""Live migration's commands: ``serve``, ``migrate``, ``gateway``."""

from __future__ import annotations

import sys

from wasmig.cli.common import ENGINE_METAVAR, ENGINES, open_listener, parse_dir, pick_engine
from wasmig.cli.output import UserError, fail, out
from wasmig.cli.parser import Number, Parser, PathOption, command


def serve_options(p: Parser) -> None:
    p.option("--listen", required=True, metavar="HOST:PORT", help="Where to accept migrations.")
    p.option("--token-file", required=True, type=PathOption(directory=False), metavar="FILE",
             help="The shared secret (at least 16 bytes, mode 600) sources must prove they hold.")
    p.option("--dir", dest="dirs", action="append", metavar="HOST::GUEST",
             help="Map a migrated program's preopened guest directory GUEST to host directory HOST here.")
    p.option("--engine", choices=ENGINES, default=None, metavar=ENGINE_METAVAR,
             help="The engine migrated programs run on here (default: wasmtime when installed).")
    p.option("--state-dir", type=PathOption(directory=True), default=None, metavar="DIRECTORY",
             help="Where received modules and pages are cached (default: ~/.cache/wasmig/serve).")
    p.option("--page-cache-mb", type=Number(int, 0), default=2048, show_default=True, metavar="INTEGER RANGE",
             help="Keep at most this much of earlier migrations' pages (trimmed when the daemon starts).")


@command("serve", serve_options)
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
        fail(str(e).replace("--tcplisten", "--listen"))
        return
    try:
        serve_forever(sock, token, engine=engine, dirs=mapping, state_dir=state, page_cache_mb=page_cache_mb)
    except KeyboardInterrupt:
        sys.exit(130)


def migrate_cmd_options(p: Parser) -> None:
    p.option("--to", required=True, metavar="HOST:PORT", help="The `wasmig serve` daemon to move to.")
    p.option("--token-file", required=True, type=PathOption(directory=False), metavar="FILE",
             help="The daemon's shared secret.")
    p.option("--quiet", action="store_true", help="No progress bar, only the summary line.")
    p.option("--no-precopy", action="store_true",
             help="Stop the program at once and send everything while it is stopped.")


@command("migrate", migrate_cmd_options, "pid", types={"pid": Number(int)})
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
                    out(f"wasmig: {msg['done']['summary']}")
                    return
                elif "error" in msg and msg.get("stopped"):
                    raise MigrationError(f"migration in doubt, the program stopped in process {pid}: {msg['error']}")
                elif "error" in msg:
                    raise MigrationError(f"migration failed, the program goes on in process {pid}: {msg['error']}")
        raise MigrationError(f"process {pid} ended the request without an answer")
    except MigrationError as e:
        fail(str(e))


def gateway_options(p: Parser) -> None:
    p.option("--listen", required=True, metavar="HOST:PORT", help="Where clients connect.")
    p.option("--control", required=True, metavar="HOST:PORT",
             help="Where programs (`wasmig run --gateway`) register and attach their connections.")
    p.option("--token-file", required=True, type=PathOption(directory=False), metavar="FILE",
             help="The shared secret a program must prove it holds to register (at least 16 bytes, mode 600).")


@command("gateway", gateway_options)
def gateway(listen: str, control: str, token_file: str) -> None:
    """Front a program's listening socket, so its TCP connections survive its migrations."""
    from wasmig.migrate.gateway import Gateway, log
    from wasmig.migrate.protocol import MigrationError, read_token

    try:
        token = read_token(token_file)
        public = open_listener(listen)
        ctl = open_listener(control)
    except (UserError, MigrationError) as e:
        fail(str(e).replace("--tcplisten", "--listen/--control"))
        return
    log(f"clients on {listen}, programs on {control}")
    try:
        Gateway(public, ctl, token).serve()
    except KeyboardInterrupt:
        sys.exit(130)
