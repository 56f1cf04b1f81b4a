"""What a checkpointable run or a restore on wasmtime reads when its caches are warm (issue 15, items 4
and 5): the module's facts (:mod:`wasmig.binary.facts`), the instrumented module's site index
(:mod:`wasmig.engines.wasmtime.site_index`) and the compiled artifact — never the module decoded, nor the
instrumented module's bytes, nor its JSON site map; and a restore reads and writes only the pages
the new instance does not hold already."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import wasmig
from tests.wasi_harness import program
from wasmig.binary.facts import ModuleFacts, cached_facts, facts_for
from wasmig.snapshot.state import from_plain, to_plain
from wasmig.wasi.preview1 import ProcExit, Wasi
from wasmig.wasi.snapshot import restore_wasi

pytest.importorskip("wasmtime")
from wasmig.engines.wasmtime import site_index  # noqa: E402
from wasmig.engines.wasmtime.checkpointable import Checkpointable  # noqa: E402
from wasmig.engines.wasmtime.instrumented import instrumented  # noqa: E402

_opened: list[Wasi] = []


@pytest.fixture(autouse=True)
def _close_wasi() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty wasmig cache for the test (``$WASMIG_CACHE``)."""
    monkeypatch.setenv("WASMIG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "wasmtime"


def _wasi(args: list[str], out: io.BytesIO, **kwargs: object) -> Wasi:
    wasi = Wasi(args, stdin=b"", stdout=out, stderr=io.BytesIO(), **kwargs)  # type: ignore[arg-type]
    _opened.append(wasi)
    return wasi


def _fresh(name: str) -> wasmig.Module:
    """The module as ``wasmig run`` on wasmtime loads it: bytes and interface, nothing decoded."""
    return wasmig.Module.from_file(program(name), decode=False, validate=False)


# --- the module's facts ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["checksum", "bigmem", "fileops", "deeprec"])
def test_facts_say_what_the_ir_says(name: str, cache: Path) -> None:
    module = wasmig.Module.from_file(program(name))
    ir = module.ir
    facts = facts_for(module)
    assert facts.sha256 == module.sha256
    assert (facts.imported_funcs, facts.defined_funcs) == (ir.num_imported_funcs(), len(ir.funcs))
    assert facts.mems == [(m.limits.min, m.limits.max) for m in ir.all_mems()]
    assert facts.globals == [(g.type, g.mutable) for g in ir.all_globals()]
    assert facts.tables == [(t.elem, t.limits.min, t.limits.max) for t in ir.all_tables()]
    assert facts.data_modes == "".join(d.mode[0] for d in ir.datas) and facts.elem_modes == "".join(
        e.mode[0] for e in ir.elems)
    # the tables the element segments build, slot by slot
    assert facts.elements is not None and facts.static_tables_problem is None
    for seg in ir.elems:
        if seg.mode == "active":
            start = seg.offset[0].imm
            assert [facts.elements[seg.table][start + k] for k in range(len(seg.init))] == \
                [expr[0].imm for expr in seg.init]
    # every byte the active data segments initialise lies on a page the facts name
    pages = facts.page_set(0)
    assert pages is not None
    for seg in ir.datas:
        if seg.mode == "active" and seg.init:
            start = seg.offset[0].imm
            assert set(range(start // 65536, (start + len(seg.init) - 1) // 65536 + 1)) <= pages
    # the code entries: each function's body starts right after its size
    assert len(facts.code_offsets) == len(ir.funcs)
    for f, off in zip(ir.funcs, facts.code_offsets, strict=True):
        assert off < f.body_offset <= off + 5
    assert ModuleFacts.from_bytes(facts.to_bytes()) == facts


def test_facts_name_a_table_changed_at_run_time(cache: Path) -> None:
    from tests.wat import wat_module

    module = wat_module("""(module (table $t 2 funcref) (func $f) (elem (i32.const 0) $f)
      (func (export "_start") (table.set $t (i32.const 1) (ref.func $f))))""")
    facts = facts_for(module)
    assert facts.elements is None and facts.static_tables_problem == "the module changes its tables at run time"


def test_facts_are_cached_by_digest_and_a_damaged_entry_is_recomputed(cache: Path) -> None:
    first = _fresh("checksum")
    facts = first.facts
    assert not first.decoded, "the module decoded only to learn its facts is forgotten again"
    (entry,) = cache.glob("facts-*.json")
    assert entry.name == f"facts-{first.digest}.json"
    again = _fresh("checksum")
    assert again.cached_facts() == facts and not again.decoded
    assert "sha256" in again.__dict__, "a cached entry gives the sha256 without hashing the bytes"
    assert again.sha256 == first.sha256
    good = entry.read_bytes()
    for damaged in (good[:-3], good[:-3] + b"xyz", b"", good.replace(b'"version":1', b'"version":0')):
        entry.write_bytes(damaged)
        module = _fresh("checksum")
        assert module.cached_facts() is None
        assert module.facts == facts
        assert cached_facts(_fresh("checksum")) == facts, "the recomputed entry is written back"
    # the version check is inside the checksum: an entry of another version is refused, not trusted
    payload = json.loads(good[48:])
    payload["version"] = 0
    with pytest.raises(ValueError):
        ModuleFacts.from_bytes(json.dumps(payload).encode())


def test_an_indirect_call_table_is_read_from_one_instruction(cache: Path) -> None:
    module = wasmig.Module.from_file(program("checksum"))
    facts = facts_for(module)
    assert module.data is not None
    indirect = 0
    for k, f in enumerate(module.ir.funcs):
        for ins in f.body:
            found = facts.indirect_call_table(module.data, k, ins.offset)
            if ins.op == 0x11:
                indirect += 1
                assert found == ins.imm[1], (k, ins)
            elif module.data[f.body_offset + ins.offset] != 0x11:
                assert found is None, (k, ins)
    assert indirect > 0, "checksum.c calls through function pointers"
    assert facts.indirect_call_table(module.data, len(module.ir.funcs), 0) is None
    assert facts.indirect_call_table(module.data, 0, 1 << 30) is None


# --- the site index ----------------------------------------------------------------------------------
def test_the_site_index_holds_the_site_map(cache: Path) -> None:
    from wasmig.instrument.unwind import instrument

    module = wasmig.Module.from_file(program("checksum"))
    for count_steps in (False, True):
        sitemap = instrument(module, count_steps=count_steps).sitemap
        raw = site_index.encode(sitemap, bytes(range(32)), 12345)
        index = site_index.SiteIndex(raw)
        assert (index.ctl_memory, index.globals_base, index.counts_steps) == (
            sitemap.ctl_memory, sitemap.globals_base, sitemap.counts_steps)
        assert (index.module_digest, index.module_size) == (bytes(range(32)), 12345)
        assert not index._site_cache, "nothing is decoded until asked"
        assert len(index.sites) == len(sitemap.sites) and list(index.sites) == sitemap.sites
        assert dict(index.functions) == sitemap.functions
        for func in sitemap.functions:
            assert index.sites_of(func) == [s for s in sitemap.sites if s.func == func]
            assert index.first_site(func) == sitemap.first_site(func) == index.sites_of(func)[0].id
        assert index.sites_of(1 << 30) == [] and index.functions.get(1 << 30) is None
        assert index.first_site(1 << 30) is None and sitemap.first_site(1 << 30) is None
        for cut in (0, 50, len(raw) // 2):
            with pytest.raises(ValueError):
                index = site_index.SiteIndex(raw[:cut])
                list(index.sites)


def test_records_are_the_same_through_the_index(cache: Path) -> None:
    """A snapshot rewinds into the same frame records whether the site map is the pass's objects
    or the index read a function at a time."""
    from wasmig.engines.wasmtime.records import records_from_frames
    from wasmig.instrument.unwind import instrument

    module = _fresh("checksum")
    out = io.BytesIO()
    runner = Checkpointable(module, _wasi(["checksum"], out), count_steps=True)
    runner.arm(4000)
    runner.start()
    assert runner.unwound
    frames, point = runner.frames()
    assert len(frames) > 1
    sitemap = instrument(wasmig.Module.from_file(program("checksum")), count_steps=True).sitemap
    assert records_from_frames(frames, point, runner.sitemap, runner._indirect_slot) == \
        records_from_frames(frames, point, sitemap, runner._indirect_slot)


# --- a checkpointable run from the caches ------------------------------------------------------------
def _reference(name: str, args: list[str]) -> bytes:
    out = io.BytesIO()
    from wasmig.session.command import run_command

    run_command(wasmig.Module.from_file(program(name)), _wasi([name, *args], out), "wasmtime")
    return out.getvalue()


def test_a_cached_start_decodes_nothing_and_checkpoints_and_rewinds(cache: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The second Checkpointable of a module reads its facts, site index and compiled artifact
    from the caches: the module is never decoded, the instrumented module never read; it stops
    at many steps (some inside qsort's comparator, reached through call_indirect), each snapshot
    rewinds in a fresh instance to the uninterrupted output — still without decoding."""
    expected = _reference("checksum", [])
    Checkpointable(_fresh("checksum"), _wasi(["checksum"], io.BytesIO()), count_steps=True)  # fills the caches
    indirect: list[tuple[int, int, int]] = []
    find = Checkpointable._find_indirect_slot
    monkeypatch.setattr(Checkpointable, "_find_indirect_slot",
                        lambda self, *key: indirect.append(key) or find(self, *key))
    assert {p.suffix for p in cache.iterdir()} >= {".json", ".sites", ".wasm", ".cwasm", ".sum"}
    for k in (50, 1000, 4000, 20000, 41000):  # of 41,963 stable points
        module, out = _fresh("checksum"), io.BytesIO()
        runner = Checkpointable(module, _wasi(["checksum"], out), count_steps=True)
        assert runner.instrumented._data is None, "a cached start does not read the instrumented module"
        runner.arm(k)
        try:
            runner.start()
        except ProcExit:
            pytest.fail(f"the program ended before step {k}")
        assert runner.unwound
        snap = from_plain(to_plain(runner.capture()))
        module2, rest = _fresh("checksum"), io.BytesIO()
        assert snap.wasi is not None
        resumed = Checkpointable(module2, restore_wasi(snap.wasi, stdin=b"", stdout=rest, stderr=io.BytesIO()),
                                 count_steps=True)
        resumed.load(snap)
        resumed.arm(None)
        try:
            resumed.resume()
        except ProcExit as e:
            assert e.code == 0
        resumed.wasi.close()
        assert out.getvalue() + rest.getvalue() == expected, k
        assert not module.decoded and not module2.decoded, f"step {k}: the module was decoded"
    assert indirect, "some stop is inside a function called through call_indirect (qsort's comparator)"


def test_an_entry_without_its_index_gets_one_and_damage_is_rebuilt(cache: Path) -> None:
    module = _fresh("hello")
    first = instrumented(module)
    assert first._data is not None
    (index,) = cache.glob("instrumented-*.sites")
    (wasm,) = cache.glob("instrumented-*.wasm")
    good = index.read_bytes()
    index.unlink()  # an entry an older wasmig wrote: the module only
    made = instrumented(_fresh("hello"))
    assert index.read_bytes() == good and list(made.sites.sites) == list(first.sites.sites)
    index.write_bytes(good[:-10])  # a damaged index: made again from the module's site map section
    assert list(instrumented(_fresh("hello")).sites.sites) == list(first.sites.sites) and index.read_bytes() == good
    # the instrumented module damaged, its index sound: the bytes are made again when needed
    wasm.write_bytes(wasm.read_bytes()[:100])
    again = instrumented(_fresh("hello"))
    assert again._data is None and again.data == first.data and len(wasm.read_bytes()) > 100
    # the rewind module (the copies, read only to rewind) damaged: made again when first needed
    (rewind,) = cache.glob("instrumented-*.rewind")
    rewind.write_bytes(rewind.read_bytes()[:100])
    again = instrumented(_fresh("hello"))
    assert again._rewind is None and again.rewind_data == first.rewind_data is not None
    assert len(rewind.read_bytes()) > 100
    # a compiled artifact that is gone is compiled from the (re-read) bytes
    for entry in cache.glob("*.cwasm"):
        entry.unlink()
    out = io.BytesIO()
    runner = Checkpointable(_fresh("hello"), _wasi(["hello", "x"], out))
    try:
        runner.start()
    except ProcExit:
        pass
    assert out.getvalue() == _reference("hello", ["x"])


# --- a restore writes what changed -------------------------------------------------------------------
def _data_module() -> wasmig.Module:
    """Three pages of data (pages 1-3, a byte pattern), of which ``_start`` changes page 2 only, in
    a loop of 1,000 iterations (1,001 stable points with the function's entry)."""
    from tests.wat import wat_module

    pattern = "".join(f"\\{(i * 7 + 3) % 251:02x}" for i in range(3 * 65536))
    return wat_module(f"""(module (memory (export "memory") 8)
      (data (i32.const 65536) "{pattern}")
      (func (export "_start") (local $i i32)
        (loop $l
          (i32.store (i32.add (i32.const 131072) (i32.shl (i32.and (local.get $i) (i32.const 15)) (i32.const 2)))
                     (local.get $i))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 1000))))))""")


def test_a_deferred_restore_reads_only_the_pages_that_changed(cache: Path, tmp_path: Path) -> None:
    """Restored from a checkpoint directory with its pages read on demand, the memory is the
    snapshot's byte for byte, and the pages the fresh instance holds already (zero, or module data
    the program never changed) are neither read nor written."""
    from wasmig.snapshot.store import CheckpointDir, load_snapshot, load_snapshot_deferred, materialize

    module = _data_module()
    runner = Checkpointable(module, _wasi(["d"], io.BytesIO()), count_steps=True)
    runner.arm(500)
    runner.start()
    assert runner.unwound
    snap = runner.capture()
    path = CheckpointDir(tmp_path / "ck").write(snap)
    deferred, pages = load_snapshot_deferred(path)
    assert pages is not None and deferred.memories[0].data == b"" and len(pages[0]) * 65536 == len(
        snap.memories[0].data)
    assert [j for j, e in enumerate(pages[0].entries) if e is not None] == [1, 2, 3]
    read: list[int] = []
    real_page = type(pages[0]).page
    real_copy = type(pages[0]).copy_page  # the restore decompresses straight into the memory

    def counting(self: object, j: int) -> bytes:
        read.append(j)
        return real_page(self, j)  # type: ignore[arg-type]

    def counting_copy(self: object, j: int, target: memoryview) -> None:
        read.append(j)
        real_copy(self, j, target)  # type: ignore[arg-type]

    assert deferred.wasi is not None
    fresh = Checkpointable(module, restore_wasi(deferred.wasi, stdin=b"", stdout=io.BytesIO(),
                                                stderr=io.BytesIO()), count_steps=True)
    try:
        type(pages[0]).page = counting  # type: ignore[method-assign]
        type(pages[0]).copy_page = counting_copy  # type: ignore[method-assign]
        fresh.load(deferred, pages=pages)
    finally:
        type(pages[0]).page = real_page  # type: ignore[method-assign]
        type(pages[0]).copy_page = real_copy  # type: ignore[method-assign]
    memory = fresh.instance.exports["memory"]
    assert bytes(memory.read(fresh.store, 0, memory.data_len(fresh.store))) == snap.memories[0].data
    assert read == [2] and fresh.pages_written == 1, "pages 1 and 3 are the module's data, unchanged"
    # the eager path reads the same memory
    whole = load_snapshot(path)
    materialize(deferred, pages)
    assert bytes(deferred.memories[0].data) == whole.memories[0].data == snap.memories[0].data
    fresh.arm(None)
    fresh.resume()
    assert fresh.steps == 1001 and not fresh.unwound, "the rewound loop ran to its end"
    fresh.wasi.close()


def test_restore_through_the_api_decodes_nothing(cache: Path, tmp_path: Path) -> None:
    from wasmig.snapshot.store import CheckpointDir

    expected, first = _reference("checksum", []), io.BytesIO()
    runner = Checkpointable(_fresh("checksum"), _wasi(["checksum"], first), count_steps=True)
    runner.arm(30000)
    runner.start()
    assert runner.unwound
    CheckpointDir(tmp_path / "ck").write(runner.capture())
    out = io.BytesIO()
    runner = wasmig.restore(tmp_path / "ck", engine="wasmtime", module=str(program("checksum")), stdout=out,
                            count_steps=True)  # the variant cached above
    assert not runner.module.decoded
    try:
        runner.resume()
    except ProcExit:
        pass
    runner.wasi.close()
    assert first.getvalue() + out.getvalue() == expected and not runner.module.decoded
