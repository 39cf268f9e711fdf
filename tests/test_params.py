"""params.yaml errors name the key and stop the stage before it writes anything."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fastflux_core.errors import ParamsError
from fastflux_core.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def _default() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert 0 <= p.ratio < 1 and p.model.source == "embedded"


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
        (lambda d: d["embedded"].update(axes_dims_rope=[8, 8, 8]), "embedded"),
        (lambda d: d["model"].update(source="flux"), "model"),  # flux needs a path
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
    for item in ("stages", "data"):
        shutil.copytree(ROOT / item, tmp_path / item, ignore=shutil.ignore_patterns("encoded", "base", "metrics", ".*"))
    d = _default()
    d["ratio"] = 2.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    r = subprocess.run([sys.executable, "stages/encode.py"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert "ratio" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "data" / "encoded").exists()
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
