"""params.yaml errors name the key and stop the stage before it writes anything."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny import repo_params

from fastflux_core.errors import ParamsError
from fastflux_core.params_file import parse_params
from fastflux_core.preflight import load_params

ROOT = Path(__file__).resolve().parents[1]


def _default() -> dict:
    return repo_params()


def test_repo_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert 0 <= p.ratio < 1 and p.model.source == "embedded"


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_rehearsal_params_are_valid_and_hold_every_key_dvc_reads(family, tmp_path):
    """examples/<family>-width/params.yaml: valid, and every key of params.yaml present — DVC stops a
    stage whose declared params section lacks a key the repository's params.yaml has."""
    from fastflux_core.rehearsal import example_params

    def keys(d: dict, prefix: str = "") -> set[str]:
        return {k for name, v in d.items() if name != "steps"
                for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else {f"{prefix}{name}"})}

    example = yaml.safe_load(example_params(tmp_path, family))
    assert parse_params(example).model.source == family
    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) <= keys(example)


@pytest.mark.parametrize("example", ["flux1-dev", "flux2-dev", "sd3.5-large", "qwen-image"])
def test_example_params_a_user_copies_are_valid_hold_every_key_and_name_disjoint_prompt_sets(example, monkeypatch):
    """examples/<model>/params.yaml (issue 31, 3): schema-valid, every key of params.yaml present, its
    prompt files there (from the repository root) and disjoint. The model folder is the user's: not
    checked here (the budget reads the family's published config without it: tests/test_budget.py)."""
    from fastflux_core.prompts import check_disjoint

    def keys(d: dict, prefix: str = "") -> set[str]:
        return {k for name, v in d.items() if name != "steps"
                for k in (keys(v, f"{prefix}{name}.") if isinstance(v, dict) else {f"{prefix}{name}"})}

    monkeypatch.chdir(ROOT)
    d = yaml.safe_load((ROOT / "examples" / example / "params.yaml").read_text())
    params = parse_params(d)
    assert keys(yaml.safe_load((ROOT / "params.yaml").read_text())) <= keys(d)
    check_disjoint(params.prompts)
    assert params.model.source != "embedded" and params.model.path is not None


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d.update(ratoi=0.1), "ratoi"),  # unknown top-level key
        (lambda d: d["embedded"].update(train_step=5), "embedded.train_step"),  # unknown nested key
        (lambda d: d.update(ratio=1.5), "ratio"),  # out of range
        (lambda d: d.update(ratio="half"), "ratio"),  # wrong type
        (lambda d: d["sampling"].update(steps=0), "sampling.steps"),
        (lambda d: d["model"].update(dtype="float8"), "model.dtype"),
        (lambda d: d["prompts"].pop("evaluation"), "prompts.evaluation"),
        (lambda d: d["embedded"]["flux"].update(axes_dims_rope=[8, 8, 8]), "embedded"),
        (lambda d: d["embedded"].update(family="sd3", sd3={"num_layers": 4, "dual_attention_layers": [4]}), "dual_attention"),
        (lambda d: d["embedded"].update(family="sd2"), "embedded.family"),
        (lambda d: d["model"].update(source="sd3", path="/models/sd3"), "guidance_scale"),  # no CFG: not silently
        (lambda d: d["model"].update(source="flux"), "model"),  # flux needs a path
        (lambda d: d["baseline"].update(ratios=[0.1, 0.3]), "baseline.ratios"),  # above max_ratio
        (lambda d: d["baseline"].update(ratios=[0.05]), "baseline.ratios"),  # replaces no block of 12
        (lambda d: d["baseline"].update(ratios=[0.1, 0.1]), "baseline.ratios"),
    ],
)
def test_bad_values_name_the_key(edit, key):
    d = _default()
    edit(d)
    with pytest.raises(ParamsError) as err:
        parse_params(d)
    assert key in str(err.value)


def test_unknown_key_message_says_unknown():
    d = _default()
    d["sampling"]["stpes"] = 3
    with pytest.raises(ParamsError, match=r"sampling\.stpes: unknown key"):
        parse_params(d)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("ratio: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "p.yaml")


def test_stage_exits_nonzero_and_writes_nothing(tmp_path):
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns(".*"))
    shutil.copytree(ROOT / "data" / "prompts", tmp_path / "data" / "prompts")  # what load_params checks
    d = _default()
    d["ratio"] = 2.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    # stage solve: a real process (its exit status), the stage whose imports are lightest
    r = subprocess.run([sys.executable, "stages/solve.py", "1"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "ratio" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "solve").exists()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]


def test_chain_steps_must_match_max_ratio():
    d = _default()
    d["max_ratio"] = 0.5  # 6 of 12 blocks
    with pytest.raises(ParamsError, match=r'"6": \{prev: 5\}'):
        parse_params(d)
    d["steps"] = {k: {"prev": k - 1} for k in range(1, 7)}  # integer keys: DVC would drop the stages
    with pytest.raises(ParamsError, match="quoted"):
        parse_params(d)
    d["steps"] = {str(k): {"prev": k - 1} for k in range(1, 7)}
    assert len(parse_params(d).steps) == 6
    d["ratio"] = 0.6
    with pytest.raises(ParamsError, match="raise max_ratio"):
        parse_params(d)


def _write_sets(tmp_path, texts: dict[str, list[str]], seeds=None) -> Path:
    d = _default()
    for name, lines in texts.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
        d["prompts"][name] = {"file": str(tmp_path / f"{name}.txt"), "images_per_prompt": 2,
                              "seed": (seeds or {}).get(name, {"calibration": 0, "training": 100, "importance": 200,
                                                               "evaluation": 300}[name])}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    return tmp_path / "params.yaml"


def test_repo_prompt_sets_are_disjoint():
    load_params(ROOT / "params.yaml")  # the shipped sets pass the strict (prompt text) check


def test_overlapping_prompt_sets_are_refused_naming_both_sets_and_the_prompt(tmp_path):
    sets = {"calibration": ["a one", "a two"], "training": ["a three"], "importance": ["a four"],
            "evaluation": ["a five", "a two"]}
    with pytest.raises(ParamsError, match=r"calibration .* and evaluation .* share the prompt 'a two'"):
        load_params(_write_sets(tmp_path, sets))
    d = yaml.safe_load((tmp_path / "params.yaml").read_text())
    d["prompts"]["disjoint"] = "items"  # same text allowed when no (prompt, seed) repeats
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    assert load_params(tmp_path / "params.yaml").prompts.disjoint == "items"


def test_same_prompt_and_seed_in_two_sets_is_refused_even_when_texts_may_repeat(tmp_path):
    sets = {"calibration": ["a one"], "training": ["a three"], "importance": ["a four"], "evaluation": ["a one"]}
    path = _write_sets(tmp_path, sets, seeds={"calibration": 5, "training": 100, "importance": 200, "evaluation": 6})
    d = yaml.safe_load(path.read_text())
    d["prompts"]["disjoint"] = "items"  # calibration seeds 5, 6 and evaluation seeds 6, 7: 'a one' with seed 6 twice
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(ParamsError, match="share the prompt and seed 6 'a one'"):
        load_params(path)


def test_capture_timesteps_span_the_schedule():
    from fastflux_core.params import capture_schedule

    assert capture_schedule(4, 28) == [0, 9, 18, 27] and capture_schedule(2, 2) == [0, 1]
    d = _default()
    d["capture"]["timesteps"] = d["sampling"]["steps"] + 1
    with pytest.raises(ParamsError, match="capture.timesteps"):
        parse_params(d)
    d["capture"]["timesteps"] = [0, 6]  # the old index list is refused, not reinterpreted
    with pytest.raises(ParamsError, match="capture.timesteps"):
        parse_params(d)


def test_importance_set_samples_with_its_own_steps_and_resolution():
    from fastflux_core.params import importance_sampling

    d = _default()
    assert importance_sampling(parse_params(d)) == parse_params(d).sampling  # null: the sampling section's
    d["importance"].update(steps=5, height=16)
    s = importance_sampling(parse_params(d))
    assert (s.steps, s.height, s.width) == (5, 16, d["sampling"]["width"])
    assert s.batch_size == d["sampling"]["batch_size"]
