"""Does dvc.yaml list what each stage really reads? (DVC re-runs a stage only for listed deps/params.)

Code: a stage's script and every ``fastflux_core`` module it imports, transitively (function-level
imports included), must be exactly its code deps. Params: every key a stage reads at run time (recorded
by tests/trace_params/sitecustomize.py when FASTFLUX_PARAMS_LOG is set) must be covered by its ``params:``
list.

    python tests/depcheck.py        # prints what dvc.yaml should list, and any disagreement
"""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fastflux_core"


def _module_file(name: str, root: Path) -> Path | None:
    f = root / Path(*name.split(".")).with_suffix(".py")
    return f if f.is_file() else None


def imports_of(path: Path, root: Path) -> set[Path]:
    """fastflux_core module files (not __init__) imported anywhere in ``path``."""
    st = path.stat()
    return set(_imports_of(path, root, (st.st_mtime_ns, st.st_size)))


@functools.lru_cache(maxsize=None)
def _imports_of(path: Path, root: Path, stamp: tuple[int, int]) -> frozenset[Path]:
    """:func:`imports_of`, parsed once per version of the file (``stamp``: it may be edited between calls)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == PACKAGE]
        for name in names:
            f = _module_file(name, root)
            if f is not None and f.name != "__init__.py":
                out.add(f)
    return frozenset(out)


def import_closure(script: Path, root: Path = ROOT) -> set[str]:
    """Repository-relative paths of the script and every fastflux_core module it reaches."""
    seen, todo = {script}, [script]
    while todo:
        for f in imports_of(todo.pop(), root):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    return {str(f.relative_to(root)) for f in seen}


def stages(dvc: dict) -> dict[str, dict]:
    """Stage name (foreach groups by their base name) → body with ``cmd``, ``deps``, ``params``."""
    return {name: st.get("do", st) for name, st in dvc.get("stages", {}).items()}


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def code_problems(dvc: dict, root: Path = ROOT) -> list[str]:
    """Disagreements between each stage's code deps and its script's import closure."""
    problems = []
    for name, body in stages(dvc).items():
        m = re.search(r"(stages/\S+\.py)", body.get("cmd", ""))
        if not m:
            problems.append(f"{name}: cmd runs no stages/*.py script")
            continue
        want = import_closure(root / m.group(1), root)
        listed = {p for p in _paths(body.get("deps")) if p.startswith(("stages/", f"{PACKAGE}/"))}
        for p in sorted(want - listed):
            problems.append(f"{name}: imports {p} but does not list it in deps")
        for p in sorted(listed - want):
            problems.append(f"{name}: lists {p} in deps but does not import it")
    return problems


def _expand(text: str, item: object, key: str | None) -> str:
    if isinstance(item, dict):
        for k, v in item.items():
            text = text.replace(f"${{item.{k}}}", str(v))
    return text.replace("${item}", str(item)).replace("${key}", str(key))


def declared_params(dvc: dict, params: dict, script: str, argv: list[str]) -> list[str] | None:
    """The params: list of the stage that ran ``script`` with ``argv`` (foreach templates expanded)."""
    for name, st in dvc.get("stages", {}).items():
        body = st.get("do", st)
        if f"stages/{script}.py" not in body.get("cmd", ""):
            continue
        if "foreach" not in st:
            return [str(p) for p in body.get("params", [])]
        group = st["foreach"]
        if isinstance(group, str):  # ${importance.blocks} / ${steps}
            value = params
            for part in group.strip("${}").split("."):
                value = value[part]
            group = value
        pairs = group.items() if isinstance(group, dict) else [(None, v) for v in group]
        for key, item in pairs:
            cmd = _expand(body["cmd"], item, key).split()
            script_at = next(i for i, w in enumerate(cmd) if w.startswith("stages/"))  # after a launcher's words
            if cmd[script_at + 1 :] == argv:
                return [_expand(str(p), item, key) for p in body.get("params", [])]
    return None


def params_problems(dvc: dict, params: dict, records: list[dict]) -> list[str]:
    """Keys a stage read (recorded at run time) that its params: list does not cover."""
    problems = []
    for rec in records:
        if rec["script"] == "validate":
            # always_changed: it checks the whole file on every run; listing params would only make
            # `dvc status` show it as changed twice over
            continue
        declared = declared_params(dvc, params, rec["script"], rec["argv"])
        if declared is None:
            problems.append(f"stages/{rec['script']}.py {rec['argv']}: no dvc.yaml stage runs it")
            continue
        for key in rec["read"]:
            if not any(key == d or key.startswith(d + ".") for d in declared):
                problems.append(f"stages/{rec['script']}.py {' '.join(rec['argv'])}: reads params key {key} "
                                f"but its stage does not list it (or a parent) under params")
    return problems


def read_records(folder: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]


if __name__ == "__main__":
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, body in stages(dvc).items():
        m = re.search(r"(stages/\S+\.py)", body.get("cmd", ""))
        if m:
            print(f"{name}:\n" + "".join(f"  - {p}\n" for p in sorted(import_closure(ROOT / m.group(1)))))
    print("\n".join(code_problems(dvc)) or "code deps agree")
