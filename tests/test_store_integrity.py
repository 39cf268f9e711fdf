"""A damaged activation store is never read as data: incomplete, deleted or truncated shards, flipped
bytes (per-chunk CRC32C) and non-finite activations each stop with one line naming file and stage."""

import json
import os

import pytest
import torch
from test_store import _write

from fastflux_core.errors import DamagedInputError, NonFiniteError
from fastflux_core.store import ArraySpec, StoreReader, StoreWriter


def _shards(store):
    return sorted(f for f in (store / "x" / "c").rglob("*") if f.is_file())


def test_incomplete_store_is_refused(tmp_path):
    _write(tmp_path / "c.zarr", close=False)
    with pytest.raises(DamagedInputError, match="incomplete: capture was interrupted"):
        StoreReader(tmp_path / "c.zarr")
    _write(tmp_path / "m.zarr")
    (tmp_path / "m.zarr.manifest.json").unlink()  # killed between the completion mark and the manifest
    with pytest.raises(DamagedInputError, match="incomplete: capture was interrupted"):
        StoreReader(tmp_path / "m.zarr")


def test_missing_store_names_the_capture_stage(tmp_path):
    with pytest.raises(DamagedInputError, match=r"re-run stage capture@3 \(dvc repro -f -s capture@3\)"):
        StoreReader(tmp_path / "data" / "capture" / "3" / "calibration.zarr")


def test_deleted_shard_is_caught_when_opened(tmp_path):
    store = tmp_path / "data" / "capture" / "2" / "training.zarr"
    _write(store)
    StoreReader(store).read("x")  # intact: reads
    shard = _shards(store)[1]
    shard.unlink()  # zarr alone would read this shard as zeros
    with pytest.raises(DamagedInputError, match=r"x/c/1/0 is damaged \(missing from the activation store\): re-run stage capture@2"):
        StoreReader(store)


def test_truncated_shard_is_caught_when_opened(tmp_path):
    _write(tmp_path / "t.zarr")
    shard = _shards(tmp_path / "t.zarr")[0]
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(DamagedInputError, match="bytes, .* when captured"):
        StoreReader(tmp_path / "t.zarr")


@pytest.mark.parametrize("where", ["chunk", "index"])
def test_flipped_bytes_fail_the_checksum(tmp_path, where):
    _write(tmp_path / "f.zarr")
    shard = _shards(tmp_path / "f.zarr")[0]
    data = bytearray(shard.read_bytes())
    pos = 20 if where == "chunk" else len(data) - 10  # the shard index (with its own CRC) is at the end
    data[pos : pos + 4] = bytes(b ^ 0xFF for b in data[pos : pos + 4])  # same size: only a checksum sees it
    shard.write_bytes(bytes(data))
    reader = StoreReader(tmp_path / "f.zarr")
    with pytest.raises(DamagedInputError, match="unreadable chunk"):
        reader.read("x")


def test_corrupted_metadata_is_one_error(tmp_path):
    _write(tmp_path / "m.zarr")
    (tmp_path / "m.zarr" / "zarr.json").write_bytes(os.urandom(64))
    with pytest.raises(DamagedInputError, match="not a readable Zarr store"):
        StoreReader(tmp_path / "m.zarr")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_activations_are_refused_before_their_shard_is_written(tmp_path, dtype, value):
    """Checked once per shard, by the writer thread before it writes: capture hears of it by close
    at the latest (before ``complete``), naming the first bad sample, and that shard never reaches
    the disk."""
    w = StoreWriter(tmp_path / "n.zarr", [ArraySpec("x", (4,), ("s", "d"))], 6, 3, 1, dtype)
    bad = torch.zeros(1, 4)
    bad[0, 1] = value
    with pytest.raises(NonFiniteError, match="captured x holds NaN/inf \\(sample 4 is the first\\)"):
        w.append("x", torch.zeros(3, 4))  # shard 0: fine, written
        w.append("x", torch.zeros(1, 4))
        w.append("x", bad)  # sample 4
        w.append("x", torch.zeros(1, 4))
        w.close()
    w.abort()
    assert not json.loads((tmp_path / "n.zarr" / "zarr.json").read_text())["attributes"]["complete"]
    assert sorted(p.name for p in (tmp_path / "n.zarr" / "x" / "c").iterdir()) == ["0"]


def test_changed_metadata_is_caught_when_opened(tmp_path):
    """Same size, still valid: only the manifest's digest of every zarr.json sees it."""
    _write(tmp_path / "g.zarr")
    meta = tmp_path / "g.zarr" / "zarr.json"
    text = meta.read_text()
    assert '"block": 7' in text
    meta.write_text(text.replace('"block": 7', '"block": 8'))  # e.g. which block the data belongs to
    with pytest.raises(DamagedInputError, match=r"g\.zarr/zarr\.json is damaged \(metadata changed since capture"):
        StoreReader(tmp_path / "g.zarr")
    _write(tmp_path / "h.zarr")
    (tmp_path / "h.zarr.manifest.json").write_text("[1, 2")
    with pytest.raises(DamagedInputError, match="unreadable manifest"):
        StoreReader(tmp_path / "h.zarr")


def test_abort_stops_every_writer_thread_before_it_returns(tmp_path, monkeypatch):
    """A stage that fails mid-capture removes its atomic output; after ``abort`` no background shard
    write can land there."""
    import threading
    import time

    import zarr

    from fastflux_core import store

    real, real_shard = zarr.Array.__setitem__, store.write_shard
    monkeypatch.setattr(zarr.Array, "__setitem__", lambda self, k, v: (time.sleep(0.05), real(self, k, v))[1])
    monkeypatch.setattr(store, "write_shard", lambda *a: (time.sleep(0.05), real_shard(*a))[1])
    w = StoreWriter(tmp_path / "a.zarr", [ArraySpec("x", (4,), ("s", "d"))], 8, 1, 1, "float32")
    for i in range(8):
        w.append("x", torch.full((1, 4), float(i)))  # one shard each: writes queue up behind the slow ones
    w.abort()
    assert not [t for t in threading.enumerate() if t.name.startswith("store-writer")]
    files = sorted(p.name for p in (tmp_path / "a.zarr").rglob("*"))
    time.sleep(0.2)
    assert sorted(p.name for p in (tmp_path / "a.zarr").rglob("*")) == files


def test_verify_reads_every_shard_so_a_late_one_stops_the_stage_before_it_works(tmp_path):
    """Issue 30 (14): a flipped byte in a shard that training reaches only in a late round was found
    hours in; ``verify`` (stage sandwich calls it first) reads every array once."""
    _write(tmp_path / "f.zarr")
    StoreReader(tmp_path / "f.zarr").verify()  # an intact store passes
    shard = _shards(tmp_path / "f.zarr")[-1]
    data = bytearray(shard.read_bytes())
    data[20:24] = bytes(b ^ 0xFF for b in data[20:24])
    shard.write_bytes(bytes(data))
    reader = StoreReader(tmp_path / "f.zarr")
    reader.read(shard.relative_to(tmp_path / "f.zarr").parts[0], 0, 2)  # the first rows still read
    with pytest.raises(DamagedInputError, match="unreadable chunk"):
        reader.verify()


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_a_compressed_store_keeps_its_crc32c(tmp_path, compression):
    """Issue 30 (17): every store test was uncompressed, so a compressed store losing its CRC32C went
    unseen. With Blosc, the CRC32C still follows it: a flipped byte is refused, not decompressed into
    other numbers (or a Blosc error the store would not name)."""
    path = tmp_path / "c.zarr"
    w = StoreWriter(path, [ArraySpec("x", (16,), ("sample", "dim"))], n_samples=4, shard_samples=4, chunk_samples=2,
                    dtype="float32", compression=compression)
    w.append("x", torch.randn(4, 16, generator=torch.Generator().manual_seed(0)))
    w.close()
    meta = json.loads((path / "x" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner][-2:] == ["blosc", "crc32c"], inner
    shard = sorted(f for f in (path / "x" / "c").rglob("*") if f.is_file())[0]
    data = bytearray(shard.read_bytes())
    data[20:24] = bytes(b ^ 0xFF for b in data[20:24])
    shard.write_bytes(bytes(data))
    with pytest.raises(DamagedInputError, match="unreadable chunk"):
        StoreReader(path).read("x")
