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


def _latents_store(path: Path) -> Path:
    w = StoreWriter(path, [ArraySpec("latents", (2, 5), ("sample", "image_seq", "channel"))], n_samples=2,
                    shard_samples=2, chunk_samples=1, dtype="float32")
    for i in range(2):
        w.append("latents", torch.full((1, 2, 5), float(i)))
    w.close()
    return path


def test_inspect_samples_a_three_dimensional_array(tmp_path, capsys):
    """Issue 30 (1): a training store's latents are (sample, token, channel); --sample printed them with a
    TypeError."""
    main(["inspect", "--quiet", str(_latents_store(tmp_path / "training.zarr")), "--sample", "2"])
    out = capsys.readouterr().out
    assert "latents" in out and "    1 1 1 1 1 1 1 1 …" in out


@pytest.mark.parametrize("form", [["--json"], ["--json", "-"], ["--json", "STORE"]])
def test_inspect_writes_json_to_stdout_for_a_bare_flag_or_a_dash(form, tmp_path, capsys):
    """Issue 30 (2): ``--json`` alone, ``--json -`` and ``--json store.zarr`` (the README's order) print
    the JSON, and nothing else, on stdout; ``--json -`` used to write a file named '-'."""
    store = _store(tmp_path / "s.zarr")
    args = ["inspect", "--quiet", *[str(store) if a == "STORE" else a for a in form]]
    main(args if form[-1] == "STORE" else [*args, str(store)])
    info = json.loads(capsys.readouterr().out)
    assert info["arrays"]["x"]["shape"] == [4, 3] and not (tmp_path / "-").exists()


def test_inspect_on_a_folder_of_stores_inspects_each(tmp_path, capsys):
    """Issue 30 (3): ``fastflux inspect data/capture/1`` called the folder a damaged store."""
    _store(tmp_path / "1" / "calibration.zarr")
    _latents_store(tmp_path / "1" / "training.zarr")
    main(["inspect", "--quiet", str(tmp_path / "1"), "--json", str(tmp_path / "both.json")])
    assert "calibration.zarr" in capsys.readouterr().out
    assert [Path(i["path"]).name for i in json.loads((tmp_path / "both.json").read_text())] == [
        "calibration.zarr", "training.zarr"]


def _fails(argv: list[str], capsys, match: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and match in err, err
    return err


def test_inspect_refuses_a_json_folder_that_does_not_exist_and_a_negative_sample(tmp_path, capsys):
    """Issue 30 (9): the table was printed, then a traceback; --sample -3 printed all but 3 rows."""
    store = _store(tmp_path / "s.zarr")
    err = _fails(["inspect", "--quiet", str(store), "--json", str(tmp_path / "no" / "info.json")], capsys,
                 "the folder")
    assert err.startswith("fastflux: error:") and len(err.strip().splitlines()) == 1
    _fails(["inspect", "--quiet", str(store), "--sample", "-3"], capsys, "not a non-negative whole number")


def _export(tmp_path: Path, config: str) -> Path:
    (tmp_path / "export" / "transformer").mkdir(parents=True)
    (tmp_path / "export" / "transformer" / "config.json").write_text(config)
    return tmp_path / "export"


GOOD_CONFIG = json.dumps({"replaced_blocks": [1], "num_layers": 2, "num_single_layers": 3, "num_attention_heads": 2,
                          "attention_head_dim": 16})


@pytest.mark.parametrize("case, match", [
    ("empty", "not a readable safetensors file"), ("truncated", "not a readable safetensors file"),
    ("pickle", "not a readable safetensors file"), ("nan", "hold NaN or inf"), ("config", "is not valid JSON")])
def test_lora_refuses_a_damaged_lora_or_export_in_one_line(case, match, tmp_path, capsys):
    """Issue 30 (9, 10): an uncaught SafetensorError for 0-byte, truncated or pickled files; a
    traceback for an export config that is not JSON; a NaN LoRA converted with exit 0."""
    import pickle

    from safetensors.torch import save_file

    lora = tmp_path / "l.safetensors"
    key = "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"
    save_file({key: torch.full((4, 32), float("nan") if case == "nan" else 0.5)}, lora)
    if case == "empty":
        lora.write_bytes(b"")
    elif case == "truncated":
        lora.write_bytes(lora.read_bytes()[:40])
    elif case == "pickle":
        lora.write_bytes(pickle.dumps({key: [0.5] * 4}))
    export = _export(tmp_path, "{not json" if case == "config" else GOOD_CONFIG)
    err = _fails(["lora", str(lora), str(export)], capsys, match)
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "l.pruned.safetensors").exists()


@pytest.mark.parametrize("args, match", [
    (["--params", "MISSING"], "parameter file not found"), (["--params", "NOT_YAML"], "is not valid YAML"),
    (["--prompts", "calibration=lots"], "--prompts wants set=count pairs"),
    (["--prompts", "calibration=5"], "--prompts needs a count for each"),
    (["--gpus", "0"], "--gpus must be at least 1"), (["--tflops", "0"], "--tflops must be a positive number"),
    (["--gpu-memory-gb", "-5"], "--gpu-memory-gb must be a positive number"),
    (["--json", "NO_FOLDER"], "does not exist")])
def test_budget_refuses_bad_arguments_and_files(args, match, tmp_path, capsys):
    """Issue 30 (9): tracebacks (a missing or non-YAML params file, --prompts garbage, --tflops 0) or
    silence (--gpu-memory-gb -5 accepted, --gpus 0) before."""
    (tmp_path / "bad.yaml").write_text("ratio: [unclosed\n")
    paths = {"MISSING": str(tmp_path / "nope.yaml"), "NOT_YAML": str(tmp_path / "bad.yaml"),
             "NO_FOLDER": str(tmp_path / "no" / "budget.json")}
    repo = Path(__file__).resolve().parents[1]
    argv = [paths.get(a, a) for a in args]
    if "--params" not in argv:
        argv = ["--params", str(repo / "params.yaml"), *argv]
    _fails(["budget", *argv], capsys, match)


@pytest.mark.parametrize("args, match", [
    (["experiments", "--seeds", "a,b", "--collect-only"], "--seeds wants distinct non-negative whole numbers"),
    (["experiments", "--experiments", "nosuch", "--collect-only"], "unknown experiment(s) nosuch"),
    (["report", "--results", "MISSING"], "--results"), (["report", "--results", "NOT_JSON"], "is not JSON")])
def test_experiments_and_report_refuse_bad_arguments(args, match, tmp_path, capsys):
    """Issue 30 (9): ValueError tracebacks for --seeds a,b and a missing or non-JSON --results; exit 1
    without an ``error:`` line for an unknown experiment."""
    (tmp_path / "r.json").write_text("{oops")
    paths = {"MISSING": str(tmp_path / "nope.json"), "NOT_JSON": str(tmp_path / "r.json")}
    err = _fails([paths.get(a, a) for a in args], capsys, match)
    assert "error:" in err and "Traceback" not in err
