"""Frame records read back from the control memory (:func:`wasmig.engines.wasmtime.records.frames_from_records`):
a record names its site relative to its function's first site plus ``SITE_BIAS``, so a number below
the bias decodes to a negative id -- which must be refused as corrupt, not taken as an index from the
end of the site list (another function's site)."""

from __future__ import annotations

import struct

import pytest

from wasmig.engines.wasmtime.records import frames_from_records
from wasmig.errors import SnapshotError
from wasmig.instrument.linking import SITE_BIAS
from wasmig.instrument.sites import FunctionLayout, Site, SiteMap
from wasmig.instrument.unwind import RECORDS_BASE, WRITE_PTR

RECORD_SIZE = 8 + 8  # header, one local


def sitemap() -> SiteMap:
    """Function 3 with sites 0 and 1; function 4 with site 2 (the last: index -1 from the end)."""
    sites = [Site(0, 3, 0, "entry", [], [], live=[0]), Site(1, 3, 5, "loop", [], [], live=[0]),
             Site(2, 3 + 1, 0, "entry", [], [], live=[0])]
    layouts = {f: FunctionLayout(f, 1, ["i32"], RECORD_SIZE) for f in (3, 4)}
    return SiteMap(ctl_memory=1, globals_base=0, sites=sites, functions=layouts)


def control_memory(relative_site: int, func: int) -> bytes:
    ctl = bytearray(RECORDS_BASE + RECORD_SIZE)
    struct.pack_into("<I", ctl, WRITE_PTR, RECORDS_BASE + RECORD_SIZE)
    struct.pack_into("<iIQ", ctl, RECORDS_BASE, relative_site, func, 7)
    return bytes(ctl)


def test_a_record_names_its_site_relative_to_its_functions_first() -> None:
    frames, point = frames_from_records(control_memory(SITE_BIAS + 1, 3), sitemap())
    assert point == "loop" and [(f.func, f.pc, f.locals) for f in frames] == [(3, 5, [("i32", 7)])]


@pytest.mark.parametrize(("relative", "func"), [(SITE_BIAS - 3, 4), (SITE_BIAS - 1, 3), (SITE_BIAS + 2, 3)],
                         ids=["id -1: function 4's own site from the end", "id -1", "beyond the sites"])
def test_a_site_number_outside_the_site_list_is_refused(relative: int, func: int) -> None:
    with pytest.raises(SnapshotError, match="corrupt frame record"):
        frames_from_records(control_memory(relative, func), sitemap())
