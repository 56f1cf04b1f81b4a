"""The import rule of docs/architecture.md, read from the code: every ``import`` of every module
under ``wasmig/`` (module level, inside functions, under ``TYPE_CHECKING``) is parsed with ``ast``,
and each test fails naming the offending edges (``importer -> imported``)."""

from __future__ import annotations

import ast
import graphlib
import itertools
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "wasmig"

FOUNDATION = ("wasmig.errors", "wasmig.hashing", "wasmig._pyblake3", "wasmig.files", "wasmig.checked", "wasmig.log",
              "wasmig.wire", "wasmig.fdwait", "wasmig.toolchain", "wasmig.keys", "wasmig.key_dir",
              "wasmig.runtime_dir")
#: group -> the modules (or packages, with everything under them) in it; the first match wins,
#: so an engine's own folder is listed before ``engines``
GROUPS: dict[str, tuple[str, ...]] = {
    "foundation": FOUNDATION,
    # the authenticated transport (TLS with pinned keys, the framed protocol): migrate/ uses it, and
    # so does wasi/'s gateway client, so it sits below both
    "transport": ("wasmig.migrate.channel", "wasmig.migrate.protocol"),
    "binary": ("wasmig.binary", "wasmig.module"),
    "snapshot": ("wasmig.snapshot",),
    "interp": ("wasmig.interp",),
    "instrument": ("wasmig.instrument",),
    "wasi": ("wasmig.wasi", "wasmig.grants"),
    "engine:interp": ("wasmig.engines.interp",),
    "engine:wasmtime": ("wasmig.engines.wasmtime",),
    "engines": ("wasmig.engines",),
    "session": ("wasmig.session",),
    "migrate": ("wasmig.migrate",),
    "top": ("wasmig.cli", "wasmig.ray", "wasmig.invoke", "wasmig.examples", "wasmig.__main__", "wasmig"),
}
_BELOW_ENGINES = {"foundation", "transport", "binary", "snapshot", "wasi"}
#: group -> the groups it may import besides its own
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "transport": {"foundation"},
    "binary": {"foundation"},
    "snapshot": {"foundation", "binary"},
    "interp": {"foundation", "binary"},
    "instrument": {"foundation", "binary"},
    "wasi": {"foundation", "binary", "snapshot", "transport"},
    "engines": _BELOW_ENGINES,
    "engine:interp": _BELOW_ENGINES | {"engines", "interp", "instrument"},
    "engine:wasmtime": _BELOW_ENGINES | {"engines", "interp", "instrument"},
    "session": _BELOW_ENGINES | {"engines"},
    "migrate": _BELOW_ENGINES | {"engines", "session"},
    "top": _BELOW_ENGINES | {"engines", "session", "migrate", "interp"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def group_of(module: str) -> str:
    for group, members in GROUPS.items():  # a member is a module, or a package with all beneath it
        if any(module == m or (m != "wasmig" and module.startswith(m + ".")) for m in members):
            return group
    raise AssertionError(f"{module} is in no group of the import rule: add it to GROUPS")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Every wasmig module a module imports: (imported, line, whether the import runs when the
    module is imported, i.e. at module level and not under ``TYPE_CHECKING``)."""

    def __init__(self, importer: str, known: dict[str, Path]) -> None:
        self.importer, self.known = importer, known
        self.found: list[tuple[str, int, bool]] = []
        self._depth = 0  # inside a function or under TYPE_CHECKING

    def _nested(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _nested  # noqa: N815

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._depth += 1
            for child in node.body:
                self.visit(child)
            self._depth -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, name: str, line: int) -> None:
        if name.split(".")[0] != "wasmig":
            return
        while name not in self.known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name != self.importer:
            self.found.append((name, line, self._depth == 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative imports are not used in wasmig
            raise AssertionError(f"{self.importer}:{node.lineno}: relative import")
        base = node.module or ""
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if full in self.known else base, node.lineno)


@cache
def imports_of(module: str) -> tuple[tuple[str, int, bool], ...]:
    known = modules()
    visitor = _Imports(module, known)
    visitor.visit(ast.parse(known[module].read_text(), str(known[module])))
    return tuple(visitor.found)


def forbidden_edges() -> list[str]:
    bad = []
    for module in modules():
        mine = group_of(module)
        for imported, line, _ in imports_of(module):
            theirs = group_of(imported)
            if theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{module}:{line} -> {imported} ({mine} may not import {theirs})")
    return bad


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Circles in the graph ``edges`` (node -> the nodes it imports), each as its path
    ``[a, b, ..., a]``: :mod:`graphlib` finds one; one of its edges is set aside and the search
    goes on, so every circle is reported, the first ones whole."""
    left = {node: set(targets) for node, targets in edges.items()}
    found: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(left).prepare()
        except graphlib.CycleError as e:
            cycle = list(reversed(e.args[1]))  # graphlib lists it against the edges' direction
            found.append(cycle)
            left[cycle[0]].discard(cycle[1])
        else:
            return found


def _describe(cycle: list[str]) -> str:
    return "circle: " + " -> ".join(cycle)


def group_circles() -> list[str]:
    """Circles between groups, over every import (lazy ones too)."""
    edges: dict[str, set[str]] = {g: set() for g in GROUPS}
    for module in modules():
        for imported, _, _ in imports_of(module):
            a, b = group_of(module), group_of(imported)
            if a != b and not b.startswith(a + ":") and not a.startswith(b + ":"):
                edges[a].add(b)
    return [_describe(c) for c in _cycles(edges)]


def module_circles() -> list[str]:
    """Circles between modules over the imports that run when a module is imported."""
    edges = {m: {i for i, _, eager in imports_of(m) if eager} for m in modules()}
    return [_describe(c) for c in _cycles(edges)]


def test_every_module_is_in_a_group() -> None:
    for module in modules():
        group_of(module)
    assert group_of("wasmig") == "top"
    try:
        group_of("wasmig.somewhere_new")
    except AssertionError:
        pass
    else:
        raise AssertionError("a module in no group must be named, not taken for the top")


def test_no_forbidden_import() -> None:
    bad = forbidden_edges()
    assert not bad, "imports the rule forbids (docs/architecture.md):\n" + "\n".join(bad)


def test_the_format_imports_no_engine() -> None:
    """``snapshot/`` imports nothing from ``engines/``, ``interp/`` or ``instrument/`` (nor above)."""
    bad = [f"{m}:{line} -> {i}" for m in modules() if group_of(m) == "snapshot"
           for i, line, _ in imports_of(m) if group_of(i) not in {"snapshot", "foundation", "binary"}]
    assert not bad, "\n".join(bad)


def test_no_import_circle() -> None:
    circles = group_circles() + module_circles()
    assert not circles, "\n".join(circles)


def test_the_checker_sees_what_it_must() -> None:
    """The checker itself: a forbidden edge, a lazy edge and a circle are found in made-up code."""
    known = {"wasmig.snapshot.x": Path("x"), "wasmig.engines.interp.y": Path("y")}
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from wasmig.engines.interp.y import Z\n"
              "def f():\n    import wasmig.engines.interp.y\n")
    visitor = _Imports("wasmig.snapshot.x", known)
    visitor.visit(ast.parse(source))
    assert visitor.found == [("wasmig.engines.interp.y", 3, False), ("wasmig.engines.interp.y", 5, False)]
    assert "engine:interp" not in ALLOWED[group_of("wasmig.snapshot.x")]
    (cycle,) = _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert len(cycle) == 4 and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert all(b in {"a": {"b"}, "b": {"c"}, "c": {"a"}}[a] for a, b in itertools.pairwise(cycle))
    assert len(_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}})) == 2
    assert _cycles({"a": {"b"}, "b": set()}) == []


def ray_imports(module: str) -> list[tuple[int, bool]]:
    """Where ``module`` imports the ``ray`` package: (line, whether at module level)."""
    found: list[tuple[int, bool]] = []

    class Visitor(ast.NodeVisitor):
        depth = 0

        def nested(self, node: ast.AST) -> None:
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1

        visit_FunctionDef = visit_AsyncFunctionDef = nested  # noqa: N815

        def visit_Import(self, node: ast.Import) -> None:
            found.extend((node.lineno, self.depth == 0) for a in node.names if a.name.split(".")[0] == "ray")

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if (node.module or "").split(".")[0] == "ray" and not node.level:
                found.append((node.lineno, self.depth == 0))

    Visitor().visit(ast.parse(modules()[module].read_text()))
    return found


def test_only_the_ray_package_imports_ray() -> None:
    """Ray stays out of every module below ``wasmig/ray`` (which runs without Ray installed); the
    command line reaches it only through ``wasmig.ray``, when ``wasmig cluster`` runs."""
    wrong = [f"{m}:{line}" for m in modules() if not (m == "wasmig.ray" or m.startswith("wasmig.ray."))
             for line, _ in ray_imports(m)]
    assert not wrong, f"import ray outside wasmig/ray: {wrong}"
    assert ray_imports("wasmig.ray.controller"), "the checker must see the controller's import of ray"
    cli_to_ray = [(name, line) for name, line, at_load in imports_of("wasmig.cli.cluster")
                  if name.startswith("wasmig.ray") and at_load]
    assert not cli_to_ray, f"wasmig.cli.cluster imports wasmig.ray when it is imported: {cli_to_ray}"
