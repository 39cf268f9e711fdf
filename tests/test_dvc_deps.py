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


def test_closure_follows_function_level_and_type_only_imports(tmp_path):
    (tmp_path / "stages").mkdir()
    (tmp_path / "fastflux_core").mkdir()
    (tmp_path / "stages" / "x.py").write_text("from fastflux_core.a import f\n")
    (tmp_path / "fastflux_core" / "a.py").write_text("def f():\n    from fastflux_core.b import g\n")
    (tmp_path / "fastflux_core" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                     "    from fastflux_core.c import C\n")
    (tmp_path / "fastflux_core" / "c.py").write_text("")
    assert import_closure(tmp_path / "stages" / "x.py", tmp_path) == {
        "stages/x.py", "fastflux_core/a.py", "fastflux_core/b.py", "fastflux_core/c.py"}
    # and in the real tree: stage baseline imports its code inside main, only when baseline.ratios is on
    assert "fastflux_core/width.py" in import_closure(ROOT / "stages" / "baseline.py")


def expanded_stages(dvc: dict, params: dict) -> dict[str, list[str]]:
    """Every stage of dvc.yaml as DVC names it (foreach members as name@key) → its output paths."""
    out = {}
    for name, st in dvc["stages"].items():
        if "foreach" not in st:
            out[name] = [o if isinstance(o, str) else next(iter(o)) for o in st.get("outs", [])]
            continue
        group = st["foreach"]
        if isinstance(group, str):
            value = params
            for part in re.sub(r"[${}]", "", group).split("."):
                value = value[part]
            group = value
        for key in group if isinstance(group, dict) else group:
            item = group[key] if isinstance(group, dict) else key
            outs = [o if isinstance(o, str) else next(iter(o)) for o in st["do"].get("outs", [])]
            subst = {"${key}": str(key), "${item}": str(item)}
            if isinstance(item, dict):
                subst.update({f"${{item.{k}}}": str(v) for k, v in item.items()})
            for a, b in subst.items():
                outs = [o.replace(a, b) for o in outs]
            out[f"{name}@{key}"] = outs
    return out


def test_lock_holds_only_stages_of_dvc_yaml():
    dvc, params = _dvc(), yaml.safe_load((ROOT / "params.yaml").read_text())
    names = set(expanded_stages(dvc, params))
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    assert set(lock["stages"]) <= names, sorted(set(lock["stages"]) - names)


def test_damaged_input_messages_name_the_stage_that_writes_it():
    """errors.producer's table agrees with dvc.yaml: every output a later stage reads maps to its stage."""
    from fastflux_core.errors import producer

    dvc, params = _dvc(), yaml.safe_load((ROOT / "params.yaml").read_text())
    checked = 0
    for stage, outs in expanded_stages(dvc, params).items():
        for out in outs:
            if out.startswith(("data/metrics/", "data/plots/", "data/timing/", "data/evaluate", "data/baseline")):
                continue  # read by no stage
            assert producer(out) == stage, (out, producer(out), stage)
            assert producer(f"{out}/some/file") == stage
            checked += 1
    assert checked >= 20
