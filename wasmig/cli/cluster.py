"""``wasmig cluster SUBCOMMAND``: programs as jobs on a Ray cluster (docs/fleet.md): ``submit``,
``ps``, ``logs``, ``migrate``, ``drain``, ``cancel``, ``nodes``. Ray is imported only when one of them runs
(through :mod:`wasmig.ray.client`), never by the rest of the command line."""

from __future__ import annotations

import os
import sys

from wasmig.cli.common import ENGINE_METAVAR, ENGINES, MAX_PERIOD_S, parse_dirs, parse_env
from wasmig.cli.output import UserError, fail, out
from wasmig.cli.parser import COMMANDS, Command, CommandLineError, Number, Parser, command, suggest

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SUBCOMMANDS: dict[str, Command] = {}


def subcommand(name: str, options: Callable[[Parser], None] | None, *arguments: str,
               rest: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``wasmig cluster NAME`` (as :func:`wasmig.cli.parser.command` does a command)."""

    def register(function: Callable[..., None]) -> Callable[..., None]:
        SUBCOMMANDS[name] = Command(function, options, arguments, None, rest)
        return function

    return register


def address_option(p: Parser) -> None:
    p.option("--address", default=None, metavar="HOST:PORT",
             help="The Ray cluster (default: $RAY_ADDRESS, else the newest cluster started on this machine).")


def with_address(more: Callable[[Parser], None] | None = None) -> Callable[[Parser], None]:
    def options(p: Parser) -> None:
        address_option(p)
        if more is not None:
            more(p)
    return options


@command("cluster", None, rest="args")
def cluster(args: tuple[str, ...]) -> None:
    """Run programs as jobs on a Ray cluster: submit, ps, logs, migrate, drain, cancel, nodes.

    Each job is a Ray actor running the program with wasmig, checkpointing to a store every node
    sees; a drained or lost node's jobs go on elsewhere from their checkpoints (docs/fleet.md).
    `wasmig cluster SUBCOMMAND --help` for each."""
    prog = "wasmig cluster"
    if not args or args[0] in ("-h", "--help"):
        names = ", ".join(sorted(SUBCOMMANDS))
        out(f"Usage: {prog} SUBCOMMAND [OPTIONS] [ARGS]...\n\n  {' '.join((cluster.__doc__ or '').split())}"
            f"\n\nSubcommands: {names}")
        sys.exit(0 if args else 2)
    name, *rest = args
    if name not in SUBCOMMANDS:
        raise CommandLineError(f"No such cluster subcommand {name!r}.{suggest(name, SUBCOMMANDS)}",
                               COMMANDS["cluster"].parser(prog))
    found = SUBCOMMANDS[name]
    values = found.parser(f"{prog} {name}").parse(rest)
    from wasmig.ray.spec import FleetError

    try:
        found.function(**values)
    except (FleetError, UserError) as e:
        fail(str(e))


def connected(address: str | None, create: bool = False) -> Any:
    """Join the cluster; the controller's handle (``create``: made if there is none yet, else
    "no wasmig jobs on this cluster yet")."""
    from wasmig.ray import client

    client.connect(address)
    return client.controller(create)


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{seconds / 60:.1f}m"


def parse_pairs(specs: tuple[str, ...], option: str, number: bool = False) -> dict[str, Any]:
    """``K=V`` options into a map (``number``: V a float)."""
    pairs: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not key or not sep or not value:
            raise UserError(f"bad {option} {spec!r}: expected KEY=VALUE")
        if number:
            try:
                pairs[key] = float(value)
            except ValueError:
                raise UserError(f"bad {option} {spec!r}: {value!r} is not a number") from None
        else:
            pairs[key] = value
    return pairs


def submit_options(p: Parser) -> None:
    address_option(p)
    p.option("--dir", dest="dirs", action="append", metavar="HOST[::GUEST]",
             help="Preopen a host directory (on a filesystem every node sees), optionally under another guest name.")
    p.option("--env", dest="envs", action="append", metavar="NAME[=VALUE]", help="Set an environment variable.")
    p.option("--engine", choices=ENGINES, default=None, metavar=ENGINE_METAVAR,
             help="The engine (a node labelled wasmig-engine=NAME runs its jobs on that one instead).")
    p.option("--node", default=None, metavar="NODE", help="Run on this node (its id, or a unique prefix).")
    p.option("--node-label", dest="node_labels", action="append", metavar="KEY=VALUE",
             help="Run only on nodes with this Ray label (repeat: all of them).")
    p.option("--resource", dest="resources", action="append", metavar="NAME=AMOUNT",
             help="Hold this much of a custom Ray resource (only nodes offering it qualify).")
    p.option("--num-cpus", type=Number(float, 0), default=1.0, show_default=True, metavar="CPUS",
             help="CPUs the job holds.")
    p.option("--checkpoint-every", type=Number(float, 0.05, MAX_PERIOD_S), default=10.0, show_default=True,
             metavar="SECONDS",
             help="Checkpoint periodically (a lost node's jobs go on from the latest one).")
    p.option("--store", required=True, metavar="DIRECTORY|URL",
             help="Where the job's snapshots, output log and fence go: a directory every node sees, "
                  "or s3://bucket/prefix (docs/fleet.md).")
    p.option("--gateway", dest="gateway_listen", default=None, metavar="[HOST]:PORT",
             help="A TCP server (listening on fd 3): its clients connect here, on the head node, through a "
                  "gateway that keeps their connections through the job's moves (no HOST: the head's address).")
    p.option("--stop-and-copy", action="store_true",
             help="Move the job by checkpoint, stop and restore (default: live, with pre-copy, where it can).")


@subcommand("submit", submit_options, "program", rest="args")
def submit(address: str | None, dirs: tuple[str, ...], envs: tuple[str, ...], engine: str | None,
           node: str | None, node_labels: tuple[str, ...], resources: tuple[str, ...], num_cpus: float,
           checkpoint_every: float, store: str, gateway_listen: str | None, stop_and_copy: bool, program: str,
           args: tuple[str, ...]) -> None:
    """Start PROGRAM.wasm [ARGS...] as a job; prints its id."""
    from wasmig.module import Module
    from wasmig.ray import client
    from wasmig.ray.spec import GatewaySpec, JobSpec, Placement

    try:
        with open(program, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"{program}: {e.strerror or e}") from None
    try:
        Module.from_bytes(data, decode=False)
    except Exception as e:  # noqa: BLE001 - any decoder complaint is the user's bad input
        raise UserError(f"{program}: not a WebAssembly module: {e}") from None
    store = job_store(store)
    spec = JobSpec(module=data, module_name=os.path.basename(program), args=tuple(args), env=parse_env(envs),
                   dirs=tuple((os.path.abspath(h), g) for h, g in parse_dirs(dirs)), engine=engine,
                   checkpoint_every=checkpoint_every, store=store, num_cpus=num_cpus,
                   placement=Placement(node=node, labels=parse_pairs(node_labels, "--node-label"),
                                       resources=parse_pairs(resources, "--resource", number=True)),
                   live=not stop_and_copy, gateway=None if gateway_listen is None else GatewaySpec(gateway_listen))
    if gateway_listen is not None and stop_and_copy:
        raise UserError("--gateway needs live moves: a TCP server's connections do not survive --stop-and-copy")
    out(client.call(connected(address, create=True).submit, spec))


@subcommand("ps", with_address())
def ps(address: str | None) -> None:
    """List the jobs: node, engine, state, last checkpoint's age, restarts, moves and the last
    move's downtime, the program (and its gateway's address)."""
    from wasmig.ray import client

    rows = client.call(connected(address).ps)
    out(f"{'JOB':<11} {'NODE':<12} {'ENGINE':<9} {'STATE':<11} {'CHECKPOINT':>10} {'RESTARTS':>8} {'MOVES':>5} "
        f"{'DOWNTIME':>9}  PROGRAM")
    for r in rows:
        state = r["state"] if r["code"] is None else f"{r['state']}({r['code']})"
        downtime = "-" if r.get("last_downtime_s") is None else f"{r['last_downtime_s'] * 1000:.0f}ms"
        served = f" (clients: {r['gateway']})" if r.get("gateway") else ""
        out(f"{r['job']:<11} {(r['node'] or '-')[:12]:<12} {r['engine'] or '-':<9} {state:<11} "
            f"{age(r['checkpoint_age_s']):>10} {r['restarts']:>8} {r['moves']:>5} {downtime:>9}  "
            f"{r['program']}{served}")


def job_store(store: str) -> str:
    """``--store`` as the job keeps it: a store URL, checked writable now (one line if not), or
    a directory, made and absolute."""
    from wasmig.errors import SnapshotError
    from wasmig.snapshot.stores import is_store_url, open_store

    if not is_store_url(store):
        try:
            os.makedirs(store, exist_ok=True)
        except OSError as e:  # a file there or on the way, a name over NAME_MAX, no permission
            raise UserError(f"--store {store}: cannot make the directory ({e.strerror or e})") from None
        return os.path.abspath(store)
    try:
        open_store(store).check_writable()
    except SnapshotError as e:
        raise UserError(f"--store {store}: {e}") from None
    return store.rstrip("/")


def logs_options(p: Parser) -> None:
    address_option(p)
    p.option("--stderr", action="store_true", help="Show the job's stderr instead of its stdout.")


@subcommand("logs", logs_options, "job")
def logs(address: str | None, stderr: bool, job: str) -> None:
    """Print a job's output so far (its stdout; --stderr)."""
    from wasmig.ray import client

    data = client.call(connected(address).logs, job, "stderr" if stderr else "stdout")
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def migrate_options(p: Parser) -> None:
    address_option(p)
    p.option("--to", default=None, metavar="NODE",
             help="The target node (id or unique prefix; default: the best other).")


@subcommand("migrate", migrate_options, "job")
def migrate(address: str | None, to: str | None, job: str) -> None:
    """Move a running job to another node (live, with pre-copy, where it can; else checkpoint, stop,
    restore there)."""
    from wasmig.ray import client

    out(describe_move(client.call(connected(address).migrate, job, to)))


def describe_move(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['job']}: not moved: {r['error']}"
    if r.get("downtime_s") is None:
        return f"{r['job']}: {r['source_outcome']} before it could move"
    how = (f"live, {r['rounds']} rounds, {r['bytes_sent'] / 1e6:.2f} MB sent" if r.get("mode") == "pre-copy"
           else "stop-and-copy" + (f": {r['why_not_live']}" if r.get("why_not_live") else ""))
    return (f"{r['job']}: {r['from'][:12]} -> {r['to'][:12]} ({r['engine']}, {how}), downtime "
            f"{r['downtime_s']:.3f} s (target ready in {r['target_ready_s']:.2f} s before the stop)")


@subcommand("drain", with_address(), "node")
def drain(address: str | None, node: str) -> None:
    """Move every job off NODE and place no more there."""
    from wasmig.ray import client

    moves = client.call(connected(address).drain, node)
    for r in moves:
        out(describe_move(r))
    moved = sum(1 for r in moves if not r.get("error"))
    out(f"drained: {moved} job{'s' if moved != 1 else ''} moved"
        + (f", {len(moves) - moved} not (they go on where they were)" if moved < len(moves) else ""))


@subcommand("nodes", with_address())
def nodes(address: str | None) -> None:
    """List the live nodes: id, jobs, draining, labels (the NODE that migrate and drain take)."""
    from wasmig.ray import client

    live = client.call(connected(address, create=True).nodes)
    out(f"{'NODE':<56} {'JOBS':>4} {'DRAINING':<8}  LABELS")
    for n in live:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())) or "-"
        out(f"{n['node']:<56} {n['jobs']:>4} {'yes' if n['draining'] else 'no':<8}  {labels}")


@subcommand("cancel", with_address(), "job")
def cancel(address: str | None, job: str) -> None:
    """Stop a job (its actor ends; its snapshots and log stay in the store)."""
    from wasmig.ray import client

    client.call(connected(address).cancel, job)
    out(f"{job}: cancelled")
