"""The library's layers as ``fastflux_core/__init__.py`` lists them, and the imports that cross them.

A module may import modules of its own layer or of layers below it; imports inside functions and
under ``TYPE_CHECKING`` count (they are imports all the same, and dvc.yaml's code deps include them:
tests/depcheck.py reads imports the same way). The whole graph must have no cycle.

    python tests/layers.py        # every layer, each module with what it imports; then any violation
"""

from __future__ import annotations

import re
from pathlib import Path

from depcheck import PACKAGE, ROOT, imports_of

LAYER = re.compile(r"^(\d+)\. (.+?) — ")
MODULE = re.compile(r"^    (\w+)\s")


def declared_layers(root: Path = ROOT) -> dict[str, tuple[int, str]]:
    """Module name → (layer number, layer name), from the package docstring."""
    doc = (root / PACKAGE / "__init__.py").read_text().split('"""')[1]
    out, layer = {}, None
    for line in doc.splitlines():
        if m := LAYER.match(line):
            layer = (int(m.group(1)), m.group(2))
        elif (m := MODULE.match(line)) and layer is not None:
            out[m.group(1)] = layer
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module name → the fastflux_core modules it imports (anywhere in its file)."""
    files = sorted(f for f in (root / PACKAGE).glob("*.py") if f.name != "__init__.py")
    return {f.stem: {g.stem for g in imports_of(f, root)} - {f.stem} for f in files}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [m, n] if n in path else [m, n]
            if n not in state and (found := visit(n, path + [m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [])):
            return found
    return None


def problems(root: Path = ROOT) -> list[str]:
    """Modules missing from the list or listed but absent, upward imports, and a cycle."""
    layers, graph = declared_layers(root), import_graph(root)
    out = [f"fastflux_core/{m}.py is in no layer of the package docstring" for m in sorted(set(graph) - set(layers))]
    out += [f"the package docstring lists {m}, which does not exist" for m in sorted(set(layers) - set(graph))]
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if m in layers and d in layers and layers[d][0] > layers[m][0]:
                out.append(f"{m} (layer {layers[m][0]}, {layers[m][1]}) imports {d}, which is above it "
                           f"(layer {layers[d][0]}, {layers[d][1]})")
    if found := cycle(graph):
        out.append("import cycle: " + " → ".join(found))
    return out


if __name__ == "__main__":
    layers, graph = declared_layers(), import_graph()
    for number in sorted({n for n, _ in layers.values()}, reverse=True):
        name = next(lname for n, lname in layers.values() if n == number)
        print(f"{number}. {name}")
        for m in [m for m, (n, _) in layers.items() if n == number]:
            print(f"    {m:<14} → {', '.join(sorted(graph.get(m, ()))) or '—'}")
    print("\n".join(problems()) or "\nimports go downward only; no cycle")
