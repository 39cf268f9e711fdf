"""Activation store: a Zarr v3 group of sharded arrays that a user can open with ``zarr.open`` or
``xarray.open_zarr``.

Every *row-aligned* array has a leading axis that grows sample by sample (``rows_per_sample`` rows
per captured sample: 1 for per-sample states, k for k sub-sampled tokens). Arrays are sharded along
that axis, ``shard_samples`` samples per shard, each chunk optionally compressed (Blosc; none by
default: ``benchmarks/capture_io.py`` measured zstd at 1/3 of the uncompressed write speed for 18 %
less disk on bf16 activations, whose mantissas do not compress) and always CRC32C-checked. Full
shards are written by background threads while capture goes on. Because writing
part of a shard rewrites the whole shard, the writer buffers one whole shard per array in memory
and writes it once — one writer per shard; whole uncompressed shards are written by
:func:`write_shard` (the bytes Zarr writes, without zarr-python's single-threaded copies), the rest
by Zarr. *Static* arrays (rotary position ids) are written once.

Named dims are Zarr v3 ``dimension_names``; dtype and storage are in the attributes. bfloat16 has no
Zarr dtype: it is stored as its uint16 bit pattern with ``stored_as: "bfloat16"`` (float16 would
overflow: FLUX activations exceed 65504). ``complete: true`` is written last; readers refuse a
store without it, so a half-written store is never read as data.

Integrity: every compressed chunk carries a CRC32C (zarr's ``Crc32cCodec``; shard indexes carry one
too), and after ``complete`` the writer adds ``<store>.manifest.json`` beside the store (inside it,
Zarr and xarray would warn about a foreign object): every file's size and the sha256 of every
(small) ``zarr.json``, whose attributes say what the data means. A reader checks the manifest
when it opens the store — Zarr would silently read a deleted shard as zeros — and every read
checks the CRCs, so a damaged store stops the stage with one line naming the file and the stage that
must re-run. Non-finite activations are refused before their shard is written.

>>> import tempfile, torch, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.zarr"
>>> w = StoreWriter(path, [ArraySpec("x", (4,), ("sample", "dim"))], n_samples=3, shard_samples=2,
...                 chunk_samples=1, dtype="float32")
>>> for i in range(3):
...     w.append("x", torch.full((1, 4), float(i)))
>>> w.close()
>>> StoreReader(path).read("x").sum(1).tolist()
[0.0, 4.0, 8.0]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import google_crc32c
import numpy as np
import torch
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec
from zarr.core.sync import sync

from fastflux_core.errors import FastFluxError, NonFiniteError, damaged
from fastflux_core.stage import World

FORMAT = "fastflux-activations/1"
_MAX_PENDING = 4  # shards waiting for a writer thread (memory: 4 shards beyond the buffers)


class StoreError(FastFluxError):
    """The store is missing, incomplete, corrupted or too big for the disk."""


@dataclass(frozen=True)
class ArraySpec:
    """One row-aligned array: per-row ``shape`` after the leading row axis, and all dim names."""

    name: str
    shape: tuple[int, ...]  # trailing shape of one row, e.g. (D,) or (N_img, D)
    dims: tuple[str, ...]  # names of every axis, leading row axis first
    rows_per_sample: int = 1
    activation: bool = True  # activations honour the store dtype; bookkeeping stays float32/int64
    dtype: str = "float32"  # for non-activation arrays


def _encode(t: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return t.detach().to(torch.bfloat16).cpu().view(torch.int16).numpy().view(np.uint16)
    return t.detach().to(torch.float32).cpu().numpy()


def decode(a: np.ndarray, stored_as: str) -> torch.Tensor:
    """Stored array → torch tensor (bfloat16 bit patterns become float32)."""
    if stored_as == "bfloat16":
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16).float()
    return torch.from_numpy(np.asarray(a))


def estimate_bytes(specs: list[ArraySpec], n_samples: int, dtype: str) -> int:
    """Uncompressed size of all row-aligned arrays."""
    total = 0
    for s in specs:
        item = 2 if (s.activation and dtype == "bfloat16") else np.dtype(s.dtype).itemsize
        total += n_samples * s.rows_per_sample * int(np.prod(s.shape)) * item
    return total


def compressors(compression: str, clevel: int) -> list:
    """Zarr codecs of every activation chunk: optional Blosc compression, then a CRC32C."""
    if compression == "none":
        return [Crc32cCodec()]
    return [BloscCodec(cname=compression, clevel=clevel, shuffle="shuffle"), Crc32cCodec()]


def check_disk(path: Path, need: int, margin: float = 1.1, what: str | None = None) -> None:
    """Fail before writing if the filesystem holding ``path`` cannot take ``need`` bytes (+10 %);
    ``what`` names the store(s) in the message (default: ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if need * margin > free:
        raise StoreError(
            f"not enough disk for {what or f'the activation store {path}'}: needs about {need / 2**30:.2f} GiB "
            f"(uncompressed, +10 %), {free / 2**30:.2f} GiB free; lower capture.image_tokens, "
            f"capture.timesteps or the calibration prompt count"
        )


class StoreWriter:
    """Streams captured tensors into a new store, one whole shard per write.

    With a ``world`` of several ranks (:mod:`fastflux_core.stage`) every rank writes the samples
    ``span`` of one store: rank 0 creates it (group, arrays, attributes) before any rank writes, each
    rank writes whole shards of its own span — spans start on shard boundaries, so no two ranks write
    one shard — and rank 0 marks it complete once every rank has closed. The files are those of one
    process writing every sample."""

    def __init__(self, path: Path, specs: list[ArraySpec], n_samples: int, shard_samples: int,
                 chunk_samples: int, dtype: str, clevel: int = 1, attrs: dict | None = None,
                 check_space: bool = True, compression: str = "none", world: World = World(),
                 span: range | None = None):
        self.path, self.specs, self.n, self.dtype = Path(path), {s.name: s for s in specs}, n_samples, dtype
        self.world, self.span = world, range(n_samples) if span is None else span
        if check_space:
            check_disk(self.path, estimate_bytes(specs, len(self.span), dtype))
        self.shard_samples = min(shard_samples, n_samples)
        if self.span and self.span.start % self.shard_samples:
            raise StoreError(f"{self.path}: a writer's samples must start on a shard boundary "
                             f"({self.span.start} is not a multiple of {self.shard_samples})")
        chunk_samples = min(chunk_samples, self.shard_samples)
        if self.shard_samples % chunk_samples:
            chunk_samples = self.shard_samples
        if world.is_main:
            self.group = zarr.open_group(zarr.storage.LocalStore(str(self.path)), mode="w-")
            self.group.attrs.update({"format": FORMAT, "complete": False, "stored_as": dtype,
                                     "n_samples": n_samples, **(attrs or {})})
        codec = compressors(compression, clevel)
        self._arrays: dict[str, zarr.Array] = {}
        self._buf: dict[str, np.ndarray] = {}  # one shard per array, filled in place
        for s in specs:
            rows = s.rows_per_sample
            store_dtype = ("uint16" if dtype == "bfloat16" else "float32") if s.activation else s.dtype
            # bookkeeping (a few bytes per sample) is one chunk per shard: each chunk and each write
            # costs zarr a fixed overhead, which made the bookkeeping of one-sample chunks 2/3 of a
            # training store's write time
            chunk = chunk_samples if s.activation else self.shard_samples
            if world.is_main:
                self._arrays[s.name] = self.group.create_array(
                    s.name, shape=(n_samples * rows, *s.shape), chunks=(chunk * rows, *s.shape),
                    shards=(self.shard_samples * rows, *s.shape), dtype=store_dtype, compressors=codec,
                    dimension_names=s.dims, fill_value=0, config={"write_empty_chunks": True},
                    attributes={"rows_per_sample": rows, "stored_as": dtype if s.activation else s.dtype},
                )
            self._buf[s.name] = np.empty((self.shard_samples * rows, *s.shape), dtype=store_dtype)
        world.barrier()  # the store exists before any rank opens it
        if not world.is_main:
            self.group = zarr.open_group(zarr.storage.LocalStore(str(self.path)), mode="r+")
            self._arrays = {s.name: self.group[s.name] for s in specs}
        self._fill: dict[str, int] = {s: 0 for s in self.specs}  # rows in the shard buffer
        # rows handed to the writers, counted from the store's first row
        self._written: dict[str, int] = {s.name: self.span.start * s.rows_per_sample for s in specs}
        # Full shards are written by two background threads while capture goes on (Zarr's encode and
        # file writes release the GIL): each shard is one region written once, so writers never share
        # a shard. At most ``_MAX_PENDING`` shards wait; the next append waits for the oldest.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-writer")
        self._direct = compression == "none" and sys.byteorder == "little"  # see write_shard
        self._pending: deque[Future] = deque()

    def write_static(self, name: str, value: torch.Tensor, dims: tuple[str, ...]) -> None:
        """An array without a sample axis (e.g. rotary position ids), written at once (by rank 0)."""
        if not self.world.is_main:
            return
        a = value.detach().cpu().numpy()
        arr = self.group.create_array(name, shape=a.shape, dtype=a.dtype, dimension_names=dims, fill_value=0,
                                      compressors=[Crc32cCodec()])
        arr[...] = a

    def append(self, name: str, rows: torch.Tensor) -> None:
        """Append samples (rows_per_sample rows each) to ``name``; full shards go to disk."""
        spec = self.specs[name]
        a = _encode(rows, self.dtype) if spec.activation else rows.detach().cpu().numpy().astype(spec.dtype)
        if a.shape[1:] != spec.shape or a.shape[0] % spec.rows_per_sample:
            raise StoreError(f"{name}: got rows of shape {tuple(a.shape)}, expected (k·{spec.rows_per_sample}, *{spec.shape})")
        if self._written[name] + self._fill[name] + len(a) > self.span.stop * spec.rows_per_sample:
            raise StoreError(f"{name}: more samples than the {len(self.span)} declared")
        pos = 0
        while pos < len(a):
            buf = self._buf[name]  # a fresh one after each flush
            take = min(len(a) - pos, len(buf) - self._fill[name])
            buf[self._fill[name] : self._fill[name] + take] = a[pos : pos + take]
            self._fill[name] += take
            pos += take
            if self._fill[name] == len(buf):
                self._flush(name)

    def _flush(self, name: str) -> None:
        """Hand the buffered rows (a whole shard, or the last one's rest) to a writer thread: one write
        of one shard; the array gets a fresh buffer."""
        fill, start, buf = self._fill[name], self._written[name], self._buf[name]
        while len(self._pending) >= _MAX_PENDING:
            self._pending.popleft().result()  # re-raises a writer's error (NonFiniteError too) here
        arr = self._arrays[name]
        if self._direct and fill == len(buf) and start % fill == 0:
            write = partial(write_shard, self.path / name, arr, start // fill, buf)
        else:  # compressed, or the last partial shard: Zarr's own pipeline
            write = partial(arr.__setitem__, slice(start, start + fill), buf[:fill])
        self._pending.append(self._pool.submit(self._checked_write, name, buf[:fill], start, write))
        self._buf[name] = np.empty_like(buf)
        self._written[name] += fill
        self._fill[name] = 0

    def _checked_write(self, name: str, rows: np.ndarray, start: int, write: Callable[[], None]) -> None:
        """A writer thread's job: refuse NaN/inf, then write the shard. One ``aminmax`` over the whole
        shard (NaN and ±inf reach the min or the max), beside capture rather than in its way: checking
        each append cost more than the rest of a training store's write (``benchmarks/capture_io.py``).
        The error reaches capture at the next shard handed over (or at close), before the store is
        marked complete; the bad shard is never written."""
        t = torch.from_numpy(rows.view(np.int16)).view(torch.bfloat16) if rows.dtype == np.uint16 else torch.from_numpy(rows)
        if t.is_floating_point() and t.numel():
            lo, hi = torch.aminmax(t)
            if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
                row = int(torch.argmax((~torch.isfinite(t.reshape(len(t), -1))).any(1).to(torch.uint8)))
                first = (start + row) // self.specs[name].rows_per_sample
                raise NonFiniteError(f"captured {name} holds NaN/inf (sample {first} is the first): the model "
                                     f"being captured produces non-finite activations; nothing was stored")
        write()

    def abort(self) -> None:
        """Stop after a failure elsewhere: drop the shards still waiting and wait for those being
        written, so no writer thread touches the (atomic, about to be removed) output after this."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        self._buf.clear()

    def close(self) -> None:
        """Flush the last (partial) shards, wait for the writers, check every array is full, and mark
        the store complete (rank 0, once every rank has closed)."""
        try:
            for name in self.specs:
                if self._fill[name]:
                    self._flush(name)
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for name, spec in self.specs.items():
            if self._written[name] != self.span.stop * spec.rows_per_sample:
                done = self._written[name] // spec.rows_per_sample - self.span.start
                raise StoreError(f"{name}: {done} of {len(self.span)} samples captured")
        self._buf.clear()
        self.world.barrier()
        if self.world.is_main:
            self.group.attrs["complete"] = True
            manifest_path(self.path).write_text(json.dumps(manifest(self.path), indent=1, sort_keys=True))


def write_shard(array_dir: Path, arr: zarr.Array, shard: int, data: np.ndarray) -> None:
    """Write one whole uncompressed shard of ``arr`` (row shard number ``shard``) as the file Zarr's
    ``sharding_indexed`` codec would — each inner chunk's little-endian bytes and its CRC32C, then the
    index of (offset, nbytes) per chunk and its CRC32C — straight from ``data`` with no copy.
    zarr-python encodes and writes every shard on its one event-loop thread, copying it twice; this
    is what lets capture write at disk speed (``benchmarks/capture_io.py``). The files are
    byte-identical to Zarr's (``tests/test_store.py``) and read back through Zarr."""
    rows = arr.chunks[0]
    parts, index, offset = [], np.empty((len(data) // rows, 2), dtype="<u8"), 0
    for c in range(len(index)):
        raw = np.ascontiguousarray(data[c * rows : (c + 1) * rows])  # a view: the shard buffer is C-ordered
        parts += [raw, np.uint32(google_crc32c.value(raw)).tobytes()]
        index[c] = (offset, raw.nbytes + 4)
        offset += raw.nbytes + 4
    idx = index.tobytes()
    parts += [idx, np.uint32(google_crc32c.value(idx)).tobytes()]
    path = array_dir / arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)


def manifest_path(store: Path) -> Path:
    """``x.zarr`` → ``x.zarr.manifest.json``, beside it."""
    return store.with_name(store.name + ".manifest.json")


def manifest(path: Path) -> dict[str, dict]:
    """``sizes``: every file of the store (but the manifest) → bytes; ``sha256``: every metadata file."""
    sizes, digests = {}, {}
    for root, _, files in os.walk(path):
        for f in files:
            rel = (Path(root) / f).relative_to(path).as_posix()
            sizes[rel] = (Path(root) / f).stat().st_size
            if f == "zarr.json":
                digests[rel] = hashlib.sha256((Path(root) / f).read_bytes()).hexdigest()
    return {"sizes": sizes, "sha256": digests}


class StoreReader:
    """Reads a complete store; refuses incomplete or foreign ones with one clear error."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise damaged(self.path, "activation store missing")
        try:
            self.group = zarr.open_group(str(self.path), mode="r")
            attrs = dict(self.group.attrs)
        except Exception as err:  # zarr raises several types for a missing/garbled store
            raise damaged(self.path, f"not a readable Zarr store: {str(err)[:200]}") from None
        if attrs.get("format") != FORMAT:
            raise damaged(self.path, f"not a FastFLUX activation store (format {attrs.get('format')!r})")
        if attrs.get("complete") is not True or not manifest_path(self.path).is_file():
            raise damaged(self.path, "incomplete: capture was interrupted")
        try:
            expected = json.loads(manifest_path(self.path).read_text())
            self._check_manifest(expected["sizes"], expected["sha256"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise damaged(manifest_path(self.path), "unreadable manifest") from None
        self.attrs = attrs
        self.stored_as = attrs["stored_as"]
        self.n_samples = attrs["n_samples"]

    def _check_manifest(self, sizes: dict[str, int], digests: dict[str, str]) -> None:
        """Every file written at completion is there with its size; metadata files are unchanged."""
        found = manifest(self.path)["sizes"]
        for rel, size in sizes.items():
            if rel not in found:
                raise damaged(self.path / rel, "missing from the activation store")
            if found[rel] != size:
                raise damaged(self.path / rel, f"{found[rel]} bytes, {size} when captured")
        for rel, digest in digests.items():
            if hashlib.sha256((self.path / rel).read_bytes()).hexdigest() != digest:
                raise damaged(self.path / rel, "metadata changed since capture (checksum mismatch)")

    def has(self, name: str) -> bool:
        """Whether the store holds array ``name`` (one a run writes only with some option, e.g. ``negative``)."""
        return name in self.group

    def array(self, name: str) -> zarr.Array:
        try:
            if name not in self.group:
                raise damaged(self.path, f"no array {name!r}")
            return self.group[name]
        except FastFluxError:
            raise
        except Exception as err:  # garbled array metadata
            raise damaged(self.path / name, f"unreadable array metadata: {str(err)[:200]}") from None

    def _get(self, name: str, index) -> np.ndarray:
        """Read with zarr, turning a checksum or decoding failure into one line naming the array."""
        arr = self.array(name)
        try:
            return index(arr)
        except Exception as err:  # zarr/numcodecs raise ValueError, RuntimeError, … for damaged chunks
            raise damaged(self.path / name, f"unreadable chunk: {str(err)[:200]}") from None

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of ``name`` as float32 (or the bookkeeping dtype)."""
        data = self._get(name, lambda a: a[start:stop])
        return decode(data, self.array(name).attrs.get("stored_as", "float32"))

    def read_samples(self, name: str, idx: np.ndarray) -> torch.Tensor:
        """Rows of a per-sample array at sorted sample indices ``idx``: each run of consecutive
        indices is one slice, and the slices are read concurrently (Zarr's async API) — 20× faster
        than ``oindex`` here (``benchmarks/capture_io.py``), with no chunk read that holds no sample
        asked for when chunks hold one sample (the training store)."""
        runs = np.split(idx, np.flatnonzero(np.diff(idx) != 1) + 1) if len(idx) else []

        async def gather(a: zarr.Array) -> list[np.ndarray]:
            return await asyncio.gather(*[a.async_array.getitem(slice(int(r[0]), int(r[-1]) + 1)) for r in runs])

        def read(a: zarr.Array) -> np.ndarray:
            return np.concatenate(sync(gather(a))) if runs else a[0:0]

        data = self._get(name, read)
        return decode(data, self.array(name).attrs.get("stored_as", "float32"))

    def verify(self) -> None:
        """Read every array once, one shard at a time (a FLUX.1-dev training store's latents are GBs): a
        damaged chunk (its CRC32C) stops the stage now, with one line naming the file and the stage to
        re-run, not when training reaches it hours later."""
        for name in sorted(self.group.array_keys()):
            arr = self.array(name)
            for _ in self.iter_rows(name, arr.shards[0] if arr.shards else max(1, arr.shape[0] if arr.ndim else 1)):
                pass

    def row_ranges(self, name: str, chunk_rows: int) -> list[range]:
        """``name``'s rows cut into consecutive pieces of at most ``chunk_rows`` rows, whole shards
        where possible (what :meth:`iter_rows` reads; ranks split these pieces among themselves)."""
        arr = self.array(name)
        n = arr.shape[0]
        shard = arr.shards[0] if arr.shards else chunk_rows
        step = max(shard, (chunk_rows // shard) * shard)
        return [range(start, min(n, start + step)) for start in range(0, n, step)]

    def iter_rows(self, name: str, chunk_rows: int, ranges: list[range] | None = None) -> Iterator[torch.Tensor]:
        """``name`` in consecutive pieces (:meth:`row_ranges`), or just the pieces ``ranges``."""
        for r in self.row_ranges(name, chunk_rows) if ranges is None else ranges:
            yield self.read(name, r.start, r.stop)


# ----------------------------------------------------------------------------- what capture@k writes

ITEM_SPECS = [
    ArraySpec("prompt", (), ("sample",), activation=False, dtype="int64"),
    ArraySpec("seed", (), ("sample",), activation=False, dtype="int64"),
    ArraySpec("schedule_step", (), ("sample",), activation=False, dtype="int64"),
    ArraySpec("timestep", (), ("sample",), activation=False),
]


# with classifier-free guidance every item's sample has an unconditional twin (the negative prompt's
# call at the same latents): ``negative`` says which; its ``prompt`` stays the item's (held-out splits)
NEGATIVE_SPEC = ArraySpec("negative", (), ("sample",), activation=False, dtype="bool")


def calibration_specs(dim: int, k_img: int, k_txt: int, cfg: bool = False) -> list[ArraySpec]:
    """calibration.zarr: block input and residual, ``k_img`` image and ``k_txt`` text tokens per sample,
    and the sample's timestep embedding ``temb`` (what the block's modulation reads)."""
    return [
        ArraySpec("block_in_img", (dim,), ("token", "dim"), k_img),
        ArraySpec("residual_img", (dim,), ("token", "dim"), k_img),
        ArraySpec("block_in_txt", (dim,), ("text_token", "dim"), k_txt),
        ArraySpec("residual_txt", (dim,), ("text_token", "dim"), k_txt),
        ArraySpec("temb", (dim,), ("sample", "dim")),  # the block's timestep embedding (solve.condition: temb)
    ] + ITEM_SPECS + ([NEGATIVE_SPEC] if cfg else [])


def training_specs(n_img: int, in_channels: int, cfg: bool = False) -> list[ArraySpec]:
    """training.zarr: the packed noisy latent and guidance the transformer received, per sample."""
    return [ArraySpec("latents", (n_img, in_channels), ("sample", "image_seq", "channel")),
            ArraySpec("guidance", (), ("sample",), activation=False)] + ITEM_SPECS + ([NEGATIVE_SPEC] if cfg else [])
