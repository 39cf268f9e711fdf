"""The deps check's params tracer: which params.yaml keys a stage process reads.

DVC re-runs a stage only when a key in its ``params:`` list changes, so a stage reading an undeclared
key would be served stale after that key changes. test_dvc_pipeline.py runs its micro pipelines with
this folder on ``PYTHONPATH`` and ``FASTFLUX_PARAMS_LOG`` naming a folder: Python imports this module
at start-up (every stage process, every worker a launcher starts), and once ``fastflux_core.params``
is imported, reading a key of a schema section is noted — from the moment the stage has its params
(``preflight.load_params`` or ``params_file.read_params`` returned to it: the checks before that read
the whole file) — and written to ``<folder>/<script>-<pid>.json`` at exit, for
``tests/depcheck.py``'s :func:`params_problems` to compare with dvc.yaml. The library knows nothing of
this: recording what is read is not part of what computes a stage's outputs, so it is in no stage's
deps. Without ``FASTFLUX_PARAMS_LOG`` it does nothing.

Only stage processes record (``sys.argv[0]`` a ``stages/*.py`` script, its launcher's workers included):
the memory estimator that placement starts as a process (``python -m fastflux_core.budget``) reads
the whole file and is no stage. A copy of a recorded section (``model_copy``, as
``params.importance_sampling`` makes) records under the section's path. Not seen: reads that bypass
attribute access (``model_dump``, iterating a section, ``==``) — no stage reads params that way.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
from pathlib import Path

_TRACED: dict[int, str] = {}  # id(section) → its dotted path in params.yaml
_KEPT: list = []  # the recorded sections themselves: an id is never reused while it is in _TRACED
_READ: set[str] = set()
_depth = 0  # nested params readers running (load_params calls read_params): record from the outermost's return


def _start(params, at: str = "") -> None:
    """Note each section of ``params`` (itself at path ``at``) by its path; reads count from now on."""
    from pydantic import BaseModel

    def walk(model: BaseModel, path: str) -> None:
        _TRACED[id(model)] = path
        _KEPT.append(model)
        for name in type(model).model_fields:
            value, sub = object.__getattribute__(model, name), f"{path}.{name}" if path else name
            if isinstance(value, BaseModel):
                walk(value, sub)
            elif isinstance(value, dict):
                for key, child in value.items():
                    if isinstance(child, BaseModel):
                        walk(child, f"{sub}.{key}")

    walk(params, at)


def _is_stage() -> bool:
    """This process runs a stage script (not dvc, not the estimator placement starts)."""
    script = Path(sys.argv[0])
    return script.suffix == ".py" and script.parent.name == "stages"


def _dump() -> None:
    if not _TRACED or not _is_stage():  # never read its params (dvc itself), or no stage (the estimator)
        return
    folder, script = Path(os.environ["FASTFLUX_PARAMS_LOG"]), Path(sys.argv[0]).stem
    folder.mkdir(parents=True, exist_ok=True)
    record = {"script": script, "argv": sys.argv[1:], "read": sorted(_READ)}
    (folder / f"{script}-{os.getpid()}.json").write_text(json.dumps(record))


def _trace_sections(module) -> None:
    """fastflux_core.params: every section notes its leaf keys as they are read."""
    strict = module._Strict

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if name in type(self).model_fields and not isinstance(value, strict):
            path = _TRACED.get(id(self))
            if path is not None:
                _READ.add(f"{path}.{name}" if path else name)
        return value

    strict.__getattribute__ = __getattribute__
    copy = strict.model_copy

    def model_copy(self, *args, **kwargs):
        out = copy(self, *args, **kwargs)
        path = _TRACED.get(id(self))
        if path is not None:
            _start(out, path)
        return out

    strict.model_copy = model_copy


def _trace_result(function_name: str):
    """A patch: the module's ``function_name`` (a params reader) starts recording on what it returns."""

    def patch(module) -> None:
        inner = getattr(module, function_name)

        @functools.wraps(inner)
        def reader(*args, **kwargs):
            global _depth
            _depth += 1
            try:
                params = inner(*args, **kwargs)
            finally:
                _depth -= 1
            if _depth == 0:
                _start(params)
            return params

        setattr(module, function_name, reader)

    return patch


PATCHES = {"fastflux_core.params": _trace_sections, "fastflux_core.params_file": _trace_result("read_params"),
           "fastflux_core.preflight": _trace_result("load_params")}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`PATCHES` as Python would, and patches each once it has run — before
    any ``from … import`` of it sees the module."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            PATCHES[name](module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("FASTFLUX_PARAMS_LOG"):
    sys.meta_path.insert(0, _PatchOnImport())
    atexit.register(_dump)
