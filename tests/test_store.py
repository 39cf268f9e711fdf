"""The sharded Zarr activation store: round trip, xarray, dtype, disk, shapes (integrity: test_store_integrity.py)."""

import shutil

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from fastflux_core.store import ArraySpec, StoreError, StoreReader, StoreWriter, estimate_bytes


def _write(path, dtype="float32", n=10, close=True):
    specs = [ArraySpec("x", (4,), ("token", "dim"), rows_per_sample=3),
             ArraySpec("s", (2, 4), ("sample", "seq", "dim")),
             ArraySpec("item", (), ("sample",), activation=False, dtype="int64")]
    w = StoreWriter(path, specs, n_samples=n, shard_samples=4, chunk_samples=2, dtype=dtype, attrs={"block": 7})
    g = torch.Generator().manual_seed(0)
    xs, ss = torch.randn(n * 3, 4, generator=g) * 1000, torch.randn(n, 2, 4, generator=g)
    for i in range(0, n, 3):  # appends that straddle shard boundaries
        j = min(n, i + 3)
        w.append("x", xs[i * 3 : j * 3])
        w.append("s", ss[i:j])
        w.append("item", torch.arange(i, j))
    if close:
        w.close()
    return xs, ss


def test_round_trip_float32(tmp_path):
    xs, ss = _write(tmp_path / "a.zarr")
    r = StoreReader(tmp_path / "a.zarr")
    torch.testing.assert_close(r.read("x"), xs)
    torch.testing.assert_close(r.read("s"), ss)
    assert r.read("item").tolist() == list(range(10))
    assert r.attrs["block"] == 7 and r.array("x").shards == (12, 4)
    torch.testing.assert_close(torch.cat(list(r.iter_rows("x", 5))), xs)
    torch.testing.assert_close(r.read_samples("s", np.array([1, 8])), ss[[1, 8]])


def test_bfloat16_stored_as_bits_and_opened_by_zarr_and_xarray(tmp_path):
    xs, _ = _write(tmp_path / "b.zarr", dtype="bfloat16")
    r = StoreReader(tmp_path / "b.zarr")
    torch.testing.assert_close(r.read("x"), xs.to(torch.bfloat16).float())  # exact bf16 values, > float16 max ok
    g = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert g["x"].dtype == np.uint16 and g["x"].attrs["stored_as"] == "bfloat16"
    ds = xr.open_zarr(str(tmp_path / "b.zarr"), consolidated=False)
    assert ds["s"].dims == ("sample", "seq", "dim") and ds["x"].dims == ("token", "dim")
    assert estimate_bytes([ArraySpec("x", (4,), ("t", "d"), 3)], 10, "bfloat16") == 10 * 3 * 4 * 2


def test_too_little_disk_fails_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**6, 10**6 - 10, 10))
    with pytest.raises(StoreError, match="not enough disk"):
        _write(tmp_path / "e.zarr")
    assert not (tmp_path / "e.zarr").exists()


def test_too_many_samples_and_wrong_shapes(tmp_path):
    w = StoreWriter(tmp_path / "f.zarr", [ArraySpec("x", (4,), ("s", "d"))], 2, 2, 1, "float32")
    with pytest.raises(StoreError, match="expected"):
        w.append("x", torch.zeros(1, 5))
    w.append("x", torch.zeros(2, 4))
    with pytest.raises(StoreError, match="more samples"):
        w.append("x", torch.zeros(2, 4))


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_our_shard_files_are_the_bytes_zarr_writes(tmp_path, chunk):
    """``write_shard`` (uncompressed shards, no copy) against Zarr's own sharding codec on the same data:
    byte-identical files, so Zarr, xarray and our reader see a Zarr store either way."""
    specs = [ArraySpec("x", (3, 2), ("sample", "a", "b"))]
    data = torch.arange(8 * 3 * 2, dtype=torch.float32).reshape(8, 3, 2)
    ours = StoreWriter(tmp_path / "ours.zarr", specs, n_samples=8, shard_samples=4, chunk_samples=chunk, dtype="bfloat16")
    assert ours._direct
    zarrs = StoreWriter(tmp_path / "zarr.zarr", specs, n_samples=8, shard_samples=4, chunk_samples=chunk, dtype="bfloat16")
    zarrs._direct = False
    for w in (ours, zarrs):
        for i in range(8):
            w.append("x", data[i : i + 1])
        w.close()
    files = sorted(p.relative_to(tmp_path / "ours.zarr") for p in (tmp_path / "ours.zarr" / "x").rglob("*") if p.is_file())
    assert len(files) == 3  # zarr.json + two shards
    for f in files:
        assert (tmp_path / "ours.zarr" / f).read_bytes() == (tmp_path / "zarr.zarr" / f).read_bytes(), f
    torch.testing.assert_close(StoreReader(tmp_path / "ours.zarr").read("x"), data.to(torch.bfloat16).float())
