# ruff: noqa: F811 - the fixtures `honest` and `world` are imported from test_crafted_snapshots and taken by name
"""Crafted snapshots through the Python API (issue 17, item 1): ``wasmig.restore`` checks a
snapshot file's seal and opens only what its caller grants, exactly as ``wasmig restore`` does.

The snapshots are those of test_crafted_snapshots.py (an honest checkpoint of ``journal.c``,
edited and sealed by an attacker's key, or by none); each refusal must be a ``wasmig`` error
(``WasmError``) raised before any host resource is opened, leaving every directory it was not
given untouched.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import pytest

import wasmig
from tests.adversarial.test_crafted_snapshots import (  # noqa: F401 - fixtures used by name
    KeyPairOfTestRun,
    World,
    add_preopen,
    free_port,
    honest,
    listener_fd,
    point_data_at,
    recording_listener,
    tree_state,
    world,
)
from wasmig.errors import SnapshotError
from wasmig.grants import Granted, GrantError
from wasmig.snapshot.store import load_snapshot


def resume(world: World, source: Any, **options: Any) -> str:
    """``wasmig.restore(source, ...)`` of journal.c on the interpreter, run to its end: its new stdout."""
    out = io.BytesIO()
    inst = wasmig.restore(source, module=str(world.honest.wasm), stdin=b"", stdout=out, stderr=io.BytesIO(),
                          **options)
    try:
        inst.resume()
    finally:
        inst.wasi.close()  # type: ignore[attr-defined]
    return out.getvalue().decode()


def refused(error: pytest.ExceptionInfo[Exception], *fragments: str) -> str:
    """A refusal is a wasmig error of one line, naming every fragment."""
    assert isinstance(error.value, wasmig.WasmError), type(error.value)
    text = str(error.value)
    assert "\n" not in text, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


# --- seals --------------------------------------------------------------------------------------------------
def test_own_key_snapshot_restores_with_no_grant_and_reuses_its_own(world: World) -> None:
    """The control: a file sealed with the user's own key (the test run's) reuses the directory it
    records, as `wasmig restore` does -- so honest use needs no keyword."""
    snap = world.crafted(point_data_at(str(world.data)), signer=KeyPairOfTestRun())
    assert world.honest.expected.endswith(resume(world, snap))
    assert tree_state(world.data) != {}


def test_unsigned_file_is_refused_unless_allowed(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    snap = world.crafted(point_data_at(str(world.data)), signer=None)
    before = tree_state(world.data)
    with pytest.raises(SnapshotError) as e:
        resume(world, snap)
    refused(e, "is not signed", "allow_unsigned=True")
    assert tree_state(world.data) == before
    # allowed, it is nobody's: the directory it records (even the right one) is not reused
    with pytest.raises(GrantError) as g:
        resume(world, snap, allow_unsigned=True)
    refused(g, "directory 'data'", "dirs={'data': HOST}")
    assert tree_state(world.data) == before
    out = resume(world, snap, allow_unsigned=True, dirs={"data": str(world.data)})
    assert out and world.honest.expected.endswith(out)
    assert "is not signed, because of allow_unsigned=True" in capsys.readouterr().err


def test_foreign_signed_file_is_refused_unless_trusted(world: World) -> None:
    snap = world.crafted(point_data_at(str(world.data)))
    before = tree_state(world.data)
    with pytest.raises(SnapshotError) as e:
        resume(world, snap, dirs={"data": str(world.data)})
    refused(e, "a key you do not trust", world.attacker.fingerprint, "trust=[FILE]")
    assert tree_state(world.data) == before
    # trusted, it restores -- with the grants given here, never its own
    with pytest.raises(GrantError):
        resume(world, snap, trust=[world.attacker_pub])
    out = resume(world, snap, trust=world.attacker_pub, dirs={"data": str(world.data)})  # one path: one key
    assert out and world.honest.expected.endswith(out)


def test_a_bad_trust_file_is_one_line(world: World) -> None:
    (world.tmp / "not-a-key").write_text("hello\n")
    with pytest.raises(SnapshotError) as e:
        resume(world, world.ck, trust=[world.tmp / "not-a-key"])
    refused(e, "trust: ")


# --- capability-only ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["trusted file", "Snapshot object"])
def test_a_snapshot_naming_a_host_directory_cannot_read_outside_the_grant(world: World, source: str) -> None:
    """The audit's snapshot pointed its preopen at a directory nobody granted: through the API too
    it is refused by name, and with the grant the program works in the granted directory only."""
    if source == "trusted file":
        snap: Any = world.crafted(point_data_at(str(world.secret)))
        trust: dict[str, Any] = {"trust": [world.attacker_pub]}
    else:  # the caller's own object: no seal to check, still capability-only
        snap = load_snapshot(world.ck)
        point_data_at(str(world.secret))(snap)
        trust = {}
    secret = tree_state(world.secret)
    with pytest.raises(GrantError) as e:
        resume(world, snap, **trust)
    refused(e, "wasmig.restore: not granted", f"directory 'data' (was {world.secret}): dirs={{'data': HOST}}")
    assert tree_state(world.secret) == secret
    data = tree_state(world.data)
    out = resume(world, snap, dirs={"data": str(world.data)}, **trust)
    assert out and world.honest.expected.endswith(out)
    assert tree_state(world.secret) == secret
    assert tree_state(world.data) != data  # it wrote where it was granted


def test_an_extra_preopen_is_refused_beside_the_granted_one(world: World) -> None:
    snap = world.crafted(add_preopen("extra", world.secret))
    with pytest.raises(GrantError) as e:
        resume(world, snap, trust=[world.attacker_pub], dirs={"data": str(world.data)})
    refused(e, f"directory 'extra' (was {world.secret}): dirs={{'extra': HOST}}")
    with pytest.raises(GrantError) as e:
        resume(world, snap, trust=[world.attacker_pub], dirs={"data": str(world.data), "nope": str(world.data)})
    refused(e, "dirs['nope']", "the snapshot has no guest directory 'nope'")


@pytest.mark.parametrize("source", ["trusted file", "Snapshot object"])
def test_a_listener_the_snapshot_names_is_not_opened(world: World, source: str) -> None:
    port = free_port()

    def add_listener(snap: Any) -> None:
        listener_fd(snap, address=f"127.0.0.1:{port}")

    if source == "trusted file":
        snap: Any = world.crafted(add_listener)
    else:
        snap = load_snapshot(world.ck)
        add_listener(snap)
    options: dict[str, Any] = {"trust": [world.attacker_pub]} if source == "trusted file" else {}
    with pytest.raises(GrantError) as e:
        resume(world, snap, dirs={"data": str(world.data)}, **options)
    refused(e, "listening socket fd", f"(was 127.0.0.1:{port}): listen=['HOST:PORT', ...]")
    with socket.create_server(("127.0.0.1", port)):  # the recorded address was never bound
        pass
    with pytest.raises(GrantError) as e:
        resume(world, snap, dirs={"data": str(world.data)}, listen=["127.0.0.1:0", "127.0.0.1:0"], **options)
    refused(e, "2 listen addresses given, but the snapshot has 1")
    # granted an address of the caller's choosing (one string is one address), the program runs on
    out = resume(world, snap, dirs={"data": str(world.data)}, listen="127.0.0.1:0", **options)
    assert out and world.honest.expected.endswith(out)


def test_a_gateway_the_snapshot_names_is_not_contacted(world: World) -> None:
    with recording_listener() as (address, connections):
        snap = world.crafted(lambda s: listener_fd(s, gateway=address, gateway_key=b"k" * 16))
        with pytest.raises(GrantError) as e:
            resume(world, snap, trust=[world.attacker_pub], dirs={"data": str(world.data)})
        refused(e, "gateway fd", f"(was {address}): gateway=[{address!r}]")
    assert connections == []


def test_a_memory_bomb_is_refused_by_max_memory(world: World) -> None:
    with pytest.raises(SnapshotError) as e:
        resume(world, world.ck, dirs={"data": str(world.data)}, max_memory=65536)
    refused(e, "more than the 65536 bytes this restore allows", "max_memory=BYTES")


def test_granted_and_keywords_are_one_or_the_other(world: World, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="either granted= or dirs="):
        resume(world, world.ck, granted=Granted(dirs={"data": str(tmp_path)}), dirs={"data": str(tmp_path)})
    # a Granted of the caller's own is exactly what opens: the granted directory, not the recorded one
    out = resume(world, world.crafted(point_data_at(str(world.secret)), signer=KeyPairOfTestRun()),
                 granted=Granted(dirs={"data": str(world.data)}))
    assert out and world.honest.expected.endswith(out)
