"""Outputs appear whole or not at all; what a stage reads is verified; errors are one line."""

import os
import sys

import pytest
import torch

from fastflux_core.errors import DamagedInputError, FastFluxError, NonFiniteError
from fastflux_core.io import atomic_dir, atomic_file, load_tensors, save_tensors, write_csv, write_json
from fastflux_core.stage import int_args, run_stage


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_old_output(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]


def test_atomic_file_and_json(tmp_path):
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text().startswith('{\n  "a": 2')


def test_temporaries_live_outside_every_output_folder(tmp_path, monkeypatch):
    """In a DVC repository a half-built output sits under .fastflux-tmp/<stage>/, so a killed stage
    leaves nothing inside data/ablate (whose hash rank depends on) or any other output folder."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setattr(sys, "argv", ["stages/ablate.py", "3"])
    with atomic_dir(tmp_path / "data" / "ablate" / "3") as tmp:
        assert tmp.parent == (tmp_path / ".fastflux-tmp" / "ablate@3").absolute()
        assert list((tmp_path / "data" / "ablate").iterdir()) == []
    assert [p.name for p in (tmp_path / "data" / "ablate").iterdir()] == ["3"]


def test_run_stage_cleans_leftovers_and_prints_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/solve.py", "2"])
    leftover = tmp_path / ".fastflux-tmp" / "solve@2" / ".2.tmp-x"
    leftover.mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_:
        run_stage(lambda: int_args("k", "prev"))
    assert exit_.value.code == 2 and not leftover.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: usage: python stages/solve.py <k> <prev>")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_stage(lambda: 1 / 0)


def test_stage_arguments_are_checked(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stages/capture.py", "1", "x"])
    with pytest.raises(FastFluxError, match=r"prev='x' must be a non-negative integer"):
        int_args("k", "prev")


def test_json_never_holds_nan_or_infinity(tmp_path):
    with pytest.raises(NonFiniteError, match=r"streams\.img\.residual is nan"):
        write_json(tmp_path / "m.json", {"streams": {"img": {"residual": float("nan")}}})
    with pytest.raises(NonFiniteError, match=r"\[1\]\.fid is inf"):
        write_csv(tmp_path / "m.csv", ["fid"], [{"fid": 1.0}, {"fid": float("inf")}])
    assert list(tmp_path.iterdir()) == []


def test_safetensors_are_verified_on_load(tmp_path):
    path = tmp_path / "data" / "solve" / "4" / "linear.safetensors"
    save_tensors(path, {"w": torch.arange(64.0).reshape(8, 8)})
    assert load_tensors(path)["w"][7, 7] == 63
    raw = bytearray(path.read_bytes())
    raw[-9] ^= 0x01  # one flipped bit in the payload: safetensors reads it happily
    path.write_bytes(bytes(raw))
    with pytest.raises(DamagedInputError, match=r"checksum mismatch\): re-run stage solve@4"):
        load_tensors(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DamagedInputError, match="unreadable safetensors"):
        load_tensors(path)
    path.write_bytes(os.urandom(100))
    with pytest.raises(DamagedInputError, match="unreadable safetensors"):
        load_tensors(path)
    with pytest.raises(NonFiniteError, match="tensor 'w' to be written"):
        save_tensors(path, {"w": torch.tensor([float("nan")])})


def test_foreign_safetensors_without_digest_are_checked_for_nan(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.tensor([1.0, float("nan")])}, str(tmp_path / "x.safetensors"))
    with pytest.raises(DamagedInputError, match="holds NaN/inf"):
        load_tensors(tmp_path / "x.safetensors")


def test_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    import errno

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/evaluate.py"])

    def write_on_full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "data/evaluate/grid.png")

    with pytest.raises(SystemExit) as exit_:
        run_stage(write_on_full_disk)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: disk full while writing data/evaluate/grid.png: free space and re-run\n"
