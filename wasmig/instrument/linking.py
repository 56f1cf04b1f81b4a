"""How an instrumented module's two halves find each other (docs/instrument.md, "Two modules"):
the names and counts both the pass and the host need, in a module that imports nothing, so that
a start reads them without importing the pass.

The pass writes a *run module* (the instrumented functions and the pass's own) and a *rewind
module* (the rewind copies alone). The rewind module imports every function, table, memory and
global of the run instance by index, so its copies keep the very indices they would have in one
module holding both (after the run module's functions)."""

#: the prefix of the run module's exports that only the rewind module imports (``f<i>``,
#: ``t<i>``, ``m<i>``, ``g<i>``: every function, table, memory and global by index). They come
#: last, so the host reads the run instance's own exports up to the first of them.
LINK_PREFIX = "wasmig:x:"
#: the import module name under which a rewind module finds its run instance's exports
RUN_MODULE_NAME = "wasmig:run"
#: the module name (name section) of a rewind module: a trap's frames in it are told apart by it
REWIND_MODULE_NAME = "wasmig:rewind"
#: the value types and counts of the pass's *savers*: ``$save_<t>_<k>(pos, v1..vk)`` stores k
#: values of type t into a frame record at its compact positions pos.. (docs/instrument.md,
#: "Compact records"); a site's values are saved by one call a run of up to 16 values of one
#: type (8/4/2/1 took up to four: QuickJS's run module 65 KB more); a saver no arm calls keeps its
#: index with an empty body
SAVE_TYPES = ("i32", "i64", "f32", "f64")
SAVE_COUNTS = tuple(range(16, 0, -1))
#: the functions the pass adds between the instrumented functions and the rewind copies
#: (``wasmig:dump``, ``wasmig:load``, the end of a rewind, a record's header, then the savers)
HELPERS = 4 + len(SAVE_TYPES) * len(SAVE_COUNTS)
#: set in a frame record's function field when it was written by a normal body, whose call
#: sites' arms save their values at compact positions rather than each local in its own slot
COMPACT_RECORD = 1 << 31
#: set besides when every site's arm of that normal body saves compactly (a big function's)
COMPACT_ALL = 1 << 30
#: how a function's code and frame records name a site: its id less the id of the function's first
#: site, plus this -- two LEB128 bytes (``-8192..-65``) for a function's first 8,128 sites, where a
#: big module's ids took three; not one byte (0..63): Cranelift merges a constant with the equal
#: ones of the hot code, and a site's small constant so kept QuickJS's JS_CallInternal running 7%
#: more instructions
SITE_BIAS = -8192


def site_number(site_id: int, first: int) -> int:
    """How code and frame records name site ``site_id`` of a function whose first site is
    ``first`` (:data:`SITE_BIAS`): the pass writes it, the host writes it into a rewind's records."""
    return site_id - first + SITE_BIAS


def site_id_of(number: int, first: int) -> int:
    """The site id a record's ``number`` names in a function whose first site is ``first``: the
    inverse of :func:`site_number`."""
    return number - SITE_BIAS + first
