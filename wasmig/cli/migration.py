"""Live migration's commands: ``serve``, ``migrate``, ``gateway``."""

from __future__ import annotations

import sys

from wasmig.cli.common import ENGINE_METAVAR, ENGINES, check_listen_address, open_listener, parse_dirs, pick_engine
from wasmig.cli.output import UserError, fail, out
from wasmig.cli.parser import Number, Parser, PathOption, command
from wasmig.errors import WasmError


def serve_options(p: Parser) -> None:
    p.option("--listen", required=True, metavar="HOST:PORT", help="Where to accept migrations.")
    p.option("--trust-peer", dest="trust_peers", action="append", default=(), metavar="FP|PUBFILE",
             help="A source allowed to migrate here: its key's sha256:... fingerprint, or its wasmig.pub "
                  "(repeat for more; at least one).")
    p.option("--key", dest="key_dir", default=None, type=PathOption(directory=True), metavar="DIRECTORY",
             help="This daemon's key pair (default: the user's, made on first use); sources pin its fingerprint.")
    p.option("--token-file", default=None, type=PathOption(directory=False), metavar="FILE",
             help="Also require this shared secret (optional second factor: at least 16 bytes, mode 600).")
    p.option("--dir", dest="dirs", action="append", metavar="HOST::GUEST",
             help="Map a migrated program's preopened guest directory GUEST to host directory HOST here.")
    p.option("--engine", choices=ENGINES, default=None, metavar=ENGINE_METAVAR,
             help="The engine migrated programs run on here (default: wasmtime when installed).")
    p.option("--state-dir", type=PathOption(directory=True), default=None, metavar="DIRECTORY",
             help="Where received modules and pages are cached (default: ~/.cache/wasmig/serve).")
    p.option("--page-cache-mb", type=Number(int, 0), default=2048, show_default=True, metavar="INTEGER RANGE",
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

    from wasmig.files import make_private_dir
    from wasmig.migrate.channel import identity_from_options
    from wasmig.migrate.protocol import parse_address, read_token
    from wasmig.migrate.target import serve as serve_forever
    from wasmig.wasi.gateway import use_key

    try:
        host, port = parse_address(listen, "--listen")
        mapping = {guest: host_dir for host_dir, guest in parse_dirs(dirs)}
        for spec in listens:
            check_listen_address(spec)
        engine = pick_engine(engine, interp_only=False)
        state = Path(state_dir) if state_dir else Path.home() / ".cache" / "wasmig" / "serve"
        try:  # made now: one that cannot be would otherwise fail each migration, or the start with a traceback
            make_private_dir(state)
        except OSError as e:
            raise UserError(f"--state-dir {state}: cannot create it ({e.strerror or e})") from None
        token = read_token(token_file) if token_file else None
        if not trust_peers:
            raise UserError("serve needs --trust-peer (the key fingerprint, or wasmig.pub, of each source allowed)")
        sock = open_listener(f"{host}:{port}")
        identity = identity_from_options(key_dir, trust_peers, token)
        use_key(identity.pair)  # the programs it runs show the daemon's key to their gateways
    except (UserError, WasmError) as e:
        fail(str(e).replace("--tcplisten", "--listen"))
        return
    try:
        serve_forever(sock, identity, engine=engine, dirs=mapping, state_dir=state, page_cache_mb=page_cache_mb,
                      listens=listens, gateways=gateways)
    except KeyboardInterrupt:
        sys.exit(130)


def migrate_cmd_options(p: Parser) -> None:
    p.option("--to", required=True, metavar="HOST:PORT", help="The `wasmig serve` daemon to move to.")
    p.option("--peer-fingerprint", dest="peers", action="append", default=(), metavar="FP|PUBFILE",
             help="The daemon's key: its sha256:... fingerprint, or its wasmig.pub (required).")
    p.option("--key", dest="key_dir", default=None, type=PathOption(directory=True), metavar="DIRECTORY",
             help="The key pair the program shows the daemon (default: the user's).")
    p.option("--token-file", default=None, type=PathOption(directory=False), metavar="FILE",
             help="A shared secret the daemon also requires (optional second factor).")
    p.option("--quiet", action="store_true", help="No progress bar, only the summary line.")
    p.option("--no-precopy", action="store_true",
             help="Stop the program at once and send everything while it is stopped.")


@command("migrate", migrate_cmd_options, "pid", types={"pid": Number(int)})
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
                    out(f"wasmig: {msg['done']['summary']}")
                    return
                elif "error" in msg and msg.get("stopped"):
                    raise MigrationError(f"migration in doubt, the program stopped in process {pid}: {msg['error']}")
                elif "error" in msg:
                    raise MigrationError(f"migration failed, the program goes on in process {pid}: {msg['error']}")
        raise MigrationError(f"process {pid} ended the request without an answer")
    except WasmError as e:
        fail(str(e))


def gateway_options(p: Parser) -> None:
    p.option("--listen", required=True, metavar="HOST:PORT", help="Where clients connect.")
    p.option("--control", required=True, metavar="HOST:PORT",
             help="Where programs (`wasmig run --gateway`) register and attach their connections.")
    p.option("--trust-peer", dest="trust_peers", action="append", default=(), metavar="FP|PUBFILE",
             help="A key allowed to run the program behind this gateway: the machine it starts on and every "
                  "daemon it may migrate to (a sha256:... fingerprint, or a wasmig.pub; at least one).")
    p.option("--key", dest="key_dir", default=None, type=PathOption(directory=True), metavar="DIRECTORY",
             help="The gateway's key pair (default: the user's, made on first use); programs pin its fingerprint.")
    p.option("--token-file", default=None, type=PathOption(directory=False), metavar="FILE",
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
        fail(str(e).replace("--tcplisten", "--listen/--control"))
        return
    log(f"clients on {listen}, programs on {control} (key {identity.fingerprint})")
    try:
        Gateway(public, ctl, identity).serve()
    except KeyboardInterrupt:
        sys.exit(130)
