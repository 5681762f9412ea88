"""The package's layers, lowest first, and the rules its imports keep: no cycle, nothing imported
from a higher layer, no private name taken from another module. Every import counts, those inside
functions and under TYPE_CHECKING too: an import moved into a function hides a cycle, it does not
remove it. docs/development.md explains the layers; this list is where they are declared."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "fastdissect"

LAYERS = ["core", "kernels", "engine", "files", "datasets", "bases", "pipeline", "report", "analyses", "compat", "cli"]
# The compiled extension, imported by kernels/ext.py alone (tests/test_dispatch.py checks that).
EXTENSION = "fastdissect._C"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int:
    """The index of the module's layer. The package's face (fastdissect/__init__.py) hands on every
    layer's names, so it counts as the top one: only the CLI may import it."""
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS) - 1
    assert parts[1] in LAYERS, f"{module} lies in no declared layer: add its folder to LAYERS"
    return LAYERS.index(parts[1])


def resolve(importer: str, is_package: bool, level: int, name: str | None) -> str:
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(known: dict[str, Path]):
    """(importer, imported module, names taken, line) for every import of a fastdissect module."""
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("fastdissect"):
                        yield module, alias.name, [], node.lineno
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
                if node.level:
                    target = resolve(module, is_package, node.level, node.module)
                if not target.startswith("fastdissect"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in known or sub == EXTENSION:  # a module imported by name
                        yield module, sub, [], node.lineno
                    else:
                        yield module, target, [alias.name], node.lineno


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return known, list(imports(known))


def test_every_module_lies_in_a_declared_layer(graph):
    known, _ = graph
    for module in known:
        layer_of(module)


def test_no_import_reaches_up_a_layer(graph):
    _, edges = graph
    upward = []
    for importer, imported, _, line in edges:
        lo, hi = layer_of(importer), layer_of(imported) if imported != EXTENSION else 1
        if importer != "fastdissect" and hi > lo:
            upward.append(f"{importer} (line {line}, layer {LAYERS[lo]}) imports {imported} (layer {LAYERS[hi]})")
    assert not upward, "\n".join(upward)


def test_no_private_name_of_another_module_is_imported(graph):
    _, edges = graph
    taken = [f"{importer} (line {line}) takes {name} from {imported}" for importer, imported, names, line in edges
             for name in names if private(name) and imported != importer]
    taken += [f"{importer} (line {line}) imports the private module {imported}" for importer, imported, _, line in
              edges if private(imported.rsplit(".", 1)[-1]) and imported != EXTENSION]
    assert not taken, "\n".join(taken)


def test_no_import_cycle(graph):
    known, edges = graph
    out = defaultdict(set)
    for importer, imported, _, _ in edges:
        if imported in known and imported != importer:
            out[importer].add(imported)
    cycles = _strongly_connected(list(known), out)
    cycles = [sorted(c) for c in cycles if len(c) > 1]
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks themselves: an upward import, a private name and a cycle, planted, are all found."""
    known = {"fastdissect.core.a": tmp_path / "a.py", "fastdissect.core.b": tmp_path / "b.py",
             "fastdissect.cli.c": tmp_path / "c.py"}
    (tmp_path / "a.py").write_text("def f():\n    from ..cli.c import g\n    from .b import _h\n")
    (tmp_path / "b.py").write_text("from . import a\n")
    (tmp_path / "c.py").write_text("")
    edges = list(imports(known))
    assert ("fastdissect.core.a", "fastdissect.cli.c", ["g"], 2) in edges
    assert ("fastdissect.core.a", "fastdissect.core.b", ["_h"], 3) in edges
    out = defaultdict(set)
    for importer, imported, _, _ in edges:
        out[importer].add(imported)
    assert [sorted(c) for c in _strongly_connected(list(known), out) if len(c) > 1] == [
        ["fastdissect.core.a", "fastdissect.core.b"]]


def _strongly_connected(nodes, out) -> list[set]:
    """Tarjan's algorithm, iterative: the import graph's strongly connected components."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(out[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.add(top)
                        if top == node:
                            break
                    comps.append(comp)
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(out[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return comps
