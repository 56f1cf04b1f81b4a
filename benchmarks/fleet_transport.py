#!/usr/bin/env python3
"""How a fleet job's pages should travel between two nodes in a live move (issue 19): wasmig's
migration protocol (TLS 1.3 with pinned keys, zstd pages in frames: what the fleet's live moves
use) or Ray's own object transfer (``ray.put`` on the source's node, ``ray.get`` on the target's).

One job, ``migrate_work.c`` with a ``--mib`` MiB heap, runs on a two-node cluster on this machine
(every address 127.0.0.1). It reports:

1. **Live moves** of that job between the two nodes through the fleet's controller, ``--moves``
   with each page transport, alternating (and alternating direction): the pages inline in the
   migration protocol's channel, or held by the source runner for the target's to take through
   Ray (``JobSpec.pages``: "channel" or "ray"; the protocol's other messages go over its channel
   either way); per move the migration's wall time (first page to commit confirmed), the downtime
   and the bytes sent (pages and messages, either way); medians per transport.
2. **The same job's pages, both ways** (``--runs`` times each, alternating): the memory of the
   job's latest checkpoint, sent from an actor on one node to an actor on the other, (a) over the
   migration protocol's authenticated channel exactly as a pre-copy round sends them (zstd level 1
   per page, 4 MiB frames, every page checked against its blake3 id on arrival and written into
   place), and (b) as Ray objects (the same compressed 4 MiB batches put into the object store on
   the source's node, fetched by the target's actor, checked and written the same way). Wall time
   from the first byte compressed to the last page in place, and the CPU time of both actors
   (``time.process_time``: the machine is shared, so the CPU figure is the steadier one); medians
   of the alternating runs.

The machine is a shared 2-core one (the load average is printed); the two transports run side by
side in one process tree, alternating, so load affects both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAGE = 65536


class PageSender:
    """On the source node: the pages of one snapshot, compressed as a pre-copy round does."""

    def __init__(self, snapshot: str, key_pem: bytes) -> None:
        from wasmig.ray.live import key_pair
        from wasmig.snapshot.store import load_snapshot

        snap = load_snapshot(snapshot)
        data = snap.memories[0].data
        self.pages = [bytes(data[i:i + PAGE]) for i in range(0, len(data), PAGE)]
        self.pages = [p for p in self.pages if any(p)]  # zero pages are never sent
        self.key = key_pair(key_pem)

    def count(self) -> int:
        return len(self.pages)

    def _batches(self) -> Any:
        import zstandard

        from wasmig.migrate.protocol import PAGE_BATCH

        cctx = zstandard.ZstdCompressor(level=1)
        batch: list[list[Any]] = []
        size = 0
        for k, page in enumerate(self.pages):
            data = cctx.compress(page)
            batch.append([k, data])
            size += len(data)
            if size >= PAGE_BATCH:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    def send_tls(self, address: str, fingerprint: str) -> float:
        """Over the migration protocol's channel; this actor's CPU seconds."""
        from wasmig.migrate.channel import Identity
        from wasmig.migrate.protocol import connect

        cpu = time.process_time()
        ch = connect(address, Identity(self.key, frozenset({fingerprint})))
        for batch in self._batches():
            ch.send("page_data", pages=batch)
        ch.send("pages_end")
        ch.recv(60.0, expect=("pages_ok",))
        ch.close()
        return time.process_time() - cpu

    def put_objects(self) -> tuple[list[Any], float]:
        """Into the object store on this node; the refs and this actor's CPU seconds."""
        import ray

        cpu = time.process_time()
        refs = [ray.put(batch) for batch in self._batches()]
        return refs, time.process_time() - cpu


class PageReceiver:
    """On the target node: pages checked against their ids and written into a memory image."""

    def __init__(self, ids: list[bytes], key_pem: bytes) -> None:
        from wasmig.ray.live import key_pair

        self.ids = ids
        self.key = key_pair(key_pem)
        self.image = bytearray(len(ids) * PAGE)
        self.listener: Any = None

    def listen(self) -> str:
        from wasmig.ray.live import listen

        self.listener = listen()
        return ":".join(map(str, self.listener.getsockname()[:2]))

    def _land(self, batch: list[list[Any]], dctx: Any) -> None:
        from wasmig.migrate.pages import page_id

        for k, compressed in batch:
            data = dctx.decompress(compressed, max_output_size=PAGE)
            if page_id(data) != self.ids[k]:
                raise ValueError("a page does not match its id")
            self.image[k * PAGE:(k + 1) * PAGE] = data

    def receive_tls(self, fingerprint: str) -> float:
        import zstandard

        from wasmig.migrate.channel import Identity
        from wasmig.migrate.protocol import accept

        conn, addr = self.listener.accept()
        cpu = time.process_time()
        ch = accept(conn, Identity(self.key, frozenset({fingerprint})), f"{addr[0]}:{addr[1]}")
        dctx = zstandard.ZstdDecompressor()
        while True:
            msg = ch.recv(60.0, expect=("page_data", "pages_end"))
            if msg["t"] == "pages_end":
                break
            self._land(msg["pages"], dctx)
        ch.send("pages_ok")
        ch.close()
        return time.process_time() - cpu

    def take_objects(self, refs: list[Any]) -> float:
        import ray
        import zstandard

        cpu = time.process_time()
        dctx = zstandard.ZstdDecompressor()
        for ref in refs:
            self._land(ray.get(ref), dctx)
        return time.process_time() - cpu


def loopback_certificate() -> tuple[bytes, bytes]:
    """A self-signed certificate for 127.0.0.1 (an IP address entry: gRPC checks one against the
    address it dialled) and its key, PEM: Ray's TLS for a one-machine cluster."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=64, help="the job's heap")
    parser.add_argument("--moves", type=int, default=4, help="live moves of the job (alternating direction)")
    parser.add_argument("--runs", type=int, default=5, help="page transfers per transport (alternating)")
    parser.add_argument("--cache", action="store_true",
                        help="keep the targets' page caches between moves (default: emptied before each move, so "
                             "that every move sends the whole memory, as to a node that never held the job)")
    parser.add_argument("--ray-tls", action="store_true",
                        help="start the cluster with Ray's TLS on (a self-signed certificate): what a cluster "
                             "beyond loopback must run, so Ray's object transfer is encrypted as the protocol is")
    args = parser.parse_args()

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (wasmig/ray/client.py says why)
    # no Ray OOM killer: it kills workers when the *machine* is 95% full, which other programs on a
    # shared machine cause (tests/ray_cluster.py does the same)
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    certificates = tempfile.TemporaryDirectory(prefix="wasmig-ray-tls-")
    if args.ray_tls:  # the nodes started below, and their workers, inherit these
        cert, key = loopback_certificate()
        for name, data in (("server.crt", cert), ("server.key", key)):
            (Path(certificates.name) / name).write_bytes(data)
        os.environ.update(RAY_USE_TLS="1", RAY_TLS_SERVER_CERT=f"{certificates.name}/server.crt",
                          RAY_TLS_SERVER_KEY=f"{certificates.name}/server.key",
                          RAY_TLS_CA_CERT=f"{certificates.name}/server.crt")
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from wasmig.migrate.pages import page_id
    from wasmig.ray import client
    from wasmig.ray.actor import latest_checkpoint
    from wasmig.ray.live import fingerprint, new_key_pem, node_directory
    from wasmig.ray.spec import JobSpec, Placement
    from wasmig.snapshot.store import load_snapshot
    from wasmig.toolchain import compile_c

    store_mib = 2 * args.mib + 100
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": store_mib * 1024 * 1024, "num_cpus": 4}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={**common, "include_dashboard": False})
    worker = cluster.add_node(**common)
    cluster.wait_for_nodes()
    client.connect(cluster.address)
    head = cluster.head_node.node_id
    try:
        with tempfile.TemporaryDirectory(prefix="wasmig-transport-") as tmp:
            ctl = client.controller()
            spec = JobSpec(module=compile_c(REPO / "tests" / "programs" / "migrate_work.c").read_bytes(),
                           module_name="migrate_work.wasm", args=("100000", str(args.mib * 1024), "20"),
                           store=str(Path(tmp) / "store"), checkpoint_every=10.0, engine="wasmtime",
                           placement=Placement(node=head), num_cpus=0.5)
            job = client.call(ctl.submit, spec)
            while client.call(ctl.job, job)["state"] != "running" or not client.call(ctl.logs, job):
                time.sleep(0.2)
            print(f"job: migrate_work.c with a {args.mib} MiB heap, on wasmtime; Ray's TLS "
                  f"{'on' if args.ray_tls else 'off'} (load average {os.getloadavg()[0]:.1f})")
            nodes = [worker.node_id, head]
            moves: dict[str, list[dict[str, Any]]] = {"channel": [], "ray": []}
            for i in range(2 * args.moves):
                via = ("channel", "ray")[i % 2]
                if not args.cache:
                    for cache in node_directory().glob("pages-*"):
                        shutil.rmtree(cache, ignore_errors=True)
                m = client.call(ctl.migrate, job, nodes[i % 2], None, via)
                moves[via].append(m)
                print(f"  live move {i + 1}, pages via {via:<7}: {m['migration_s']:.2f} s, downtime "
                      f"{m['downtime_s'] * 1000:.0f} ms, {m['rounds']} rounds, {m['bytes_sent'] / 2**20:.1f} MiB sent, "
                      f"{m['pages_known']} pages the target had")
            for via, done in moves.items():
                per_move = statistics.median(m["migration_s"] for m in done)
                downtime = statistics.median(m["downtime_s"] for m in done)
                print(f"live moves, pages via {via:<7}: median {per_move:.2f} s per move, downtime "
                      f"{downtime * 1000:.0f} ms")
            whole = (statistics.median(m["migration_s"] for m in moves["ray"])
                     / statistics.median(m["migration_s"] for m in moves["channel"]))
            print(f"whole live moves, pages via Ray / via the channel: {whole:.2f}x")

            # the job's memory as its periodic checkpoint holds it
            snapshot = latest_checkpoint(spec, job)
            while snapshot is None:
                time.sleep(0.5)
                snapshot = latest_checkpoint(spec, job)
            client.call(ctl.cancel, job)
            snap = load_snapshot(snapshot)
            data = snap.memories[0].data
            pages = [bytes(data[i:i + PAGE]) for i in range(0, len(data), PAGE)]
            ids = [page_id(p) for p in pages if any(p)]
            del snap, data, pages
            send_key, recv_key = new_key_pem(), new_key_pem()
            on = {n: NodeAffinitySchedulingStrategy(n, soft=False) for n in (head, worker.node_id)}
            sender = ray.remote(PageSender).options(num_cpus=0.5, scheduling_strategy=on[head]).remote(
                str(snapshot), send_key)
            receiver = ray.remote(PageReceiver).options(num_cpus=0.5, scheduling_strategy=on[worker.node_id]).remote(
                ids, recv_key)
            count = ray.get(sender.count.remote())
            print(f"pages of its checkpoint: {count} non-zero ({count * PAGE / 2**20:.0f} MiB)")
            figures: dict[str, list[tuple[float, float]]] = {"tls": [], "ray": []}
            for _ in range(args.runs):
                for transport in ("tls", "ray"):
                    if transport == "tls":
                        address = ray.get(receiver.listen.remote())
                        started = time.perf_counter()
                        got = receiver.receive_tls.remote(fingerprint(send_key))
                        cpu = ray.get(sender.send_tls.remote(address, fingerprint(recv_key))) + ray.get(got)
                    else:
                        started = time.perf_counter()
                        refs, cpu_put = ray.get(sender.put_objects.remote())
                        cpu = cpu_put + ray.get(receiver.take_objects.remote(refs))
                        del refs
                    figures[transport].append((time.perf_counter() - started, cpu))
            for transport, name in (("tls", "migration protocol (TLS)"), ("ray", "Ray object transfer")):
                wall = statistics.median(w for w, _ in figures[transport])
                cpu = statistics.median(c for _, c in figures[transport])
                print(f"  {name:<26}: wall {wall:.3f} s ({count * PAGE / 2**20 / wall:.0f} MiB/s), "
                      f"CPU of both actors {cpu:.3f} s (medians of {args.runs})")
            ratio = statistics.median(w for w, _ in figures["ray"]) / statistics.median(w for w, _ in figures["tls"])
            print(f"Ray objects / TLS, wall: {ratio:.2f}x (load average {os.getloadavg()[0]:.1f})")
    finally:
        ray.shutdown()
        cluster.shutdown()
        certificates.cleanup()


if __name__ == "__main__":
    main()
