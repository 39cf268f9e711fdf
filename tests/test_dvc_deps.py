"""dvc.yaml lists, for every stage, its script and exactly the fastflux_core modules that script
imports (transitively); dvc.lock holds no stage dvc.yaml no longer has. A stage missing a module would
be served stale by DVC after that module changes."""

import copy
import re

import yaml
from depcheck import ROOT, code_problems, import_closure


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_lists_exactly_its_import_closure():
    assert code_problems(_dvc()) == []


def test_a_missing_module_is_caught():
    doctored = copy.deepcopy(_dvc())
    deps = doctored["stages"]["capture"]["do"]["deps"]
    deps.remove("fastflux_core/store.py")
    deps.append("fastflux_core/metrics.py")  # listed but never imported
    problems = code_problems(doctored)
    assert "capture: imports fastflux_core/store.py but does not list it in deps" in problems
    assert "capture: lists fastflux_core/metrics.py in deps but does not import it" in problems


def test_closure_follows_function_level_imports():
    closure = import_closure(ROOT / "stages" / "evaluate.py")
    assert "fastflux_core/assemble.py" in closure  # imported inside evaluation.evaluate()
    assert "fastflux_core/speed.py" in closure


def test_lock_holds_only_stages_of_dvc_yaml():
    dvc, params = _dvc(), yaml.safe_load((ROOT / "params.yaml").read_text())
    names = set()
    for name, st in dvc["stages"].items():
        if "foreach" not in st:
            names.add(name)
            continue
        group = st["foreach"]
        if isinstance(group, str):
            value = params
            for part in re.sub(r"[${}]", "", group).split("."):
                value = value[part]
            group = value
        names |= {f"{name}@{k}" for k in (group if isinstance(group, dict) else group)}
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert set(lock["stages"]) <= names, sorted(set(lock["stages"]) - names)
