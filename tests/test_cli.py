"""The `fastflux` console command (pyproject [project.scripts]): help everywhere, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastflux_core.cli import main
from fastflux_core.store import ArraySpec, StoreWriter

FASTFLUX = str(Path(sys.executable).with_name("fastflux"))  # installed beside this Python by scripts/setup.sh


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([FASTFLUX, *args], capture_output=True, text=True, cwd=cwd)


def _store(path: Path, complete: bool = True) -> Path:
    w = StoreWriter(path, [ArraySpec("x", (3,), ("sample", "dim"))], n_samples=4, shard_samples=2, chunk_samples=1,
                    dtype="bfloat16")
    for i in range(4 if complete else 2):
        w.append("x", torch.tensor([[i, -i, 0.5 * i]]))
    if complete:
        w.close()
    else:
        w.abort()
    return path


@pytest.mark.parametrize("command", ["inspect", "lora", "budget", "experiments", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"usage: fastflux {command} " in out and len(out.splitlines()) > 3


def test_inspect_prints_layout_and_statistics(tmp_path):
    """Through the installed console script (the only test that starts one: each start imports torch)."""
    store = _store(tmp_path / "s.zarr")
    out = _run("inspect", str(store), "--sample", "2", "--json", str(tmp_path / "info.json"))
    assert out.returncode == 0, out.stderr
    info = json.loads((tmp_path / "info.json").read_text())
    x = info["arrays"]["x"]
    assert info["complete"] and x["dims"] == ["sample", "dim"] and x["stored_as"] == "bfloat16" and x["shards"] == [2, 3]
    assert (x["min"], x["max"], x["nan"]) == (-3.0, 3.0, 0) and x["mean"] == pytest.approx(0.25)
    assert x["sample"] == [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]] and x["bytes_on_disk"] > 0
    assert "bfloat16" in out.stdout and "x " in out.stdout


@pytest.mark.parametrize("case, match", [("missing", "no activation store"), ("incomplete", "incomplete")])
def test_inspect_refuses_missing_and_incomplete_stores_in_one_line(case, match, tmp_path, capsys):
    path = tmp_path / "s.zarr" if case == "missing" else _store(tmp_path / "s.zarr", complete=False)
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", "--quiet", str(path)])
    out = capsys.readouterr()
    assert exit_.value.code == 2 and out.err.startswith("fastflux: error:") and match in out.err
    assert len(out.err.strip().splitlines()) == 1 and out.out == ""


def test_lora_error_is_one_line_and_writes_nothing(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"some.random.key": torch.zeros(2)}, tmp_path / "l.safetensors")
    (tmp_path / "export" / "transformer").mkdir(parents=True)
    (tmp_path / "export" / "transformer" / "config.json").write_text(json.dumps(
        {"replaced_blocks": [1], "num_layers": 2, "num_single_layers": 3, "num_attention_heads": 2, "attention_head_dim": 16}))
    with pytest.raises(SystemExit) as exit_:
        main(["lora", str(tmp_path / "l.safetensors"), str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "no known FLUX format" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l.pruned.safetensors").exists()
