"""The commands about snapshots: ``checkpoint``, ``inspect``, ``keygen``, ``diff``, ``gc``, ``export``,
``import``."""

from __future__ import annotations

import sys

from wasmig.cli.common import check_module_option, size_option
from wasmig.cli.output import DIFF_DIFFERENT_EXIT_CODE, DIFF_TROUBLE_EXIT_CODE, UserError, about, err, fail, out
from wasmig.cli.parser import Number, Parser, command
from wasmig.errors import WasmError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (start-up)
if TYPE_CHECKING:
    from wasmig.snapshot.state import Snapshot


def checkpoint_cmd_options(p: Parser) -> None:
    p.option("--timeout", type=Number(float, 0), default=30.0, show_default=True, metavar="FLOAT",
             help="Seconds to wait for the snapshot.")


@command("checkpoint", checkpoint_cmd_options, "pid", types={"pid": Number(int)})
def checkpoint_cmd(timeout: float, pid: int) -> None:
    """Ask a running `wasmig run --checkpoint-dir ...` (process PID) for a snapshot now."""
    from wasmig.session.status import wait_for_snapshot
    from wasmig.snapshot.state import SnapshotError

    try:
        path = wait_for_snapshot(pid, timeout)
    except SnapshotError as e:
        fail(str(e))
        return
    out(str(path))


def inspect_options(p: Parser) -> None:
    p.option("--json", dest="as_json", action="store_true", help="Machine-readable output.")
    p.option("--module", dest="module_path", default=None, help="The .wasm, for function names.")
    p.option("--verify", action="store_true",
             help="Fail (exit 1) unless the snapshot is signed by your own key or one given with --trust.")
    p.option("--trust", dest="trust_files", action="append", metavar="KEYFILE",
             help="Trust snapshots signed by this public key (a wasmig.pub) too, besides your own.")
    p.option("--max-memory", type=size_option, default=None, metavar="SIZE",
             help="Refuse a snapshot whose memory is larger (e.g. 2G; default 1G), before reading it.")


@command("inspect", inspect_options, "snapshot")
def inspect(as_json: bool, module_path: str | None, verify: bool, trust_files: tuple[str, ...],
            max_memory: int | None, snapshot: str) -> None:
    """Summarise a snapshot: who signed it, the host resources a restore would need, call stack,
    memory, open files."""
    import json

    from wasmig.grants import needed
    from wasmig.session.modules import find_module_for
    from wasmig.snapshot.admission import trust_from_options
    from wasmig.snapshot.inspect import format_summary, summarize
    from wasmig.snapshot.limits import check_manifest_memory
    from wasmig.snapshot.signing import check_trust, describe
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.store import load_snapshot, read_sealed
    from wasmig.snapshot.store_stats import checkpoint_chain, storage_stats

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
        fail(about(snapshot, e))
        return
    try:
        check_module_option(module_path)
        ir = find_module_for(snapshot, snap, module_path).ir
    except (UserError, SnapshotError, WasmError) as e:
        ir = None  # the summary goes on without function names; a --module the user gave is worth a word
        if module_path is not None:
            err(f"wasmig: warning: {about(module_path, e)}; function names left out")
    summary = summarize(snap, ir, stats, chain)
    seal = container.seal
    summary["signature"] = {"signer": seal.signer.fingerprint if seal is not None else None,
                            "valid": seal.valid() if seal is not None else None,
                            "trusted": bool(seal is not None and seal.valid() and trust.trusted(seal.signer)),
                            "own_key": bool(seal is not None and seal.valid() and trust.is_own(seal.signer)),
                            "description": describe(seal, trust)}
    summary["host_resources"] = [vars(r) for r in needed(snap.wasi)] if snap.wasi is not None else []
    out(json.dumps(summary, indent=2) if as_json else format_summary(summary))


def keygen_options(p: Parser) -> None:
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
        fail(str(e))
        return
    except OSError as e:
        fail(f"cannot write the key pair: {e.strerror or e}" + (f" ({e.filename})" if e.filename else ""))
        return
    out(pair.fingerprint)
    out(f"public key: {where / PUBLIC_NAME}")


def gc_options(p: Parser) -> None:
    p.option("--dry-run", action="store_true", help="Only report what would be removed.")
    p.option("--grace", dest="grace_s", type=Number(float, 0), default=None, metavar="SECONDS",
             help="In a file:// or s3:// store: how old an unreferenced page must be before it is set aside, "
                  "and a set-aside page before it is deleted (default 3600; keep it above the longest "
                  "checkpoint write, see docs/stores.md).")


@command("gc", gc_options, "directory")
def gc(dry_run: bool, grace_s: float | None, directory: str) -> None:
    """Remove the pages of a checkpoint DIRECTORY (or a file:// or s3:// store: of its whole root
    or bucket) that no snapshot names any more."""
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.stores import is_store_url, open_store

    remote = is_store_url(directory)
    if grace_s is not None and not remote:
        fail("--grace is for file:// and s3:// stores (a checkpoint directory's gc locks out its writers)")
        return
    try:
        stats = open_store(directory).gc(dry_run=dry_run, grace_s=grace_s)
    except SnapshotError as e:
        fail(about(directory, e))
        return
    verb = "would remove" if dry_run else "removed"
    aside = ""
    if remote:
        aside = (f"; {'would set' if dry_run else 'set'} aside {stats['pages_set_aside']} (removed by a gc after the "
                 f"grace period unless named again), {stats['pages_restored']} named again"
                 + (f", {stats['packs_rewritten']} packs compacted" if stats.get("packs_rewritten") else ""))
    out(f"{directory}: {stats['snapshots']} snapshots, {stats['pages_kept']} pages kept; {verb} "
         f"{stats['pages_removed']} unreferenced pages ({stats['bytes_removed']} bytes)" + aside
         + (f" and {stats['temp_files_removed']} stale temporary files" if stats["temp_files_removed"] else ""))


def diff_options(p: Parser) -> None:
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

    def load(path: str) -> Snapshot:  # within the default memory limit, checked before a page is read
        file, container = read_sealed(path)
        try:
            check_manifest_memory(container.manifest, None)
        except SnapshotError as e:
            raise SnapshotError(f"{path}: {e}") from None
        return load_snapshot(file, expect=container.checksum)

    try:
        snaps = [load(a), load(b)]
    except SnapshotError as e:
        fail(str(e), DIFF_TROUBLE_EXIT_CODE)
        return
    lines = diff_snapshots(*snaps)
    if as_json:
        out(json.dumps({"a": a, "b": b, "same": not lines, "differences": lines}, indent=2))
    else:
        for line in lines:
            out(line)
    sys.exit(DIFF_DIFFERENT_EXIT_CODE if lines else 0)


def export_cmd_options(p: Parser) -> None:
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

    if not output:  # Path("") is ".": the error said '. is a directory'
        fail("-o: the output file name is empty")
        return
    try:
        result = export_snapshot(snapshot, output, module=module_path, force=force)
    except SnapshotError as e:
        fail(str(e))
        return
    err(f"wasmig: exported {result.snapshot} to {result.output} ({result.pages} pages, {result.bytes} bytes)")


@command("import", None, "file", "directory")
def import_cmd(file: str, directory: str) -> None:
    """Unpack the .wsnap FILE into the checkpoint DIRECTORY (created if missing) as its newest
    snapshot; prints the new snapshot file's path."""
    from wasmig.snapshot.state import SnapshotError
    from wasmig.snapshot.wsnap import import_wsnap

    try:
        path = import_wsnap(file, directory)
    except SnapshotError as e:
        fail(str(e))
        return
    out(str(path))
