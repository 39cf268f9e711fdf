"""Least squares weighs each captured row by the share of its stream it stands for (N/k), so a block
fitted on k_img of N_img image tokens and k_txt of N_txt text tokens per sample sees both streams as
the whole sequences would weigh them (issue 30, 17: every other fixture keeps all tokens, weights 1)."""

import numpy as np
import pytest
import torch

from fastflux_core.solve import row_weight, solve_store
from fastflux_core.store import StoreReader, StoreWriter, calibration_specs


@pytest.mark.parametrize("kind, streams", [("single", ("joint",)), ("joint", ("img", "txt"))])
def test_least_squares_weighs_each_streams_rows_by_its_sampled_share(tmp_path, kind, streams):
    dim, n, k_img, k_txt = 6, 12, 2, 3
    tokens, sampled = {"img": 40, "txt": 6}, {"img": k_img, "txt": k_txt}
    w = StoreWriter(tmp_path / "cal.zarr", calibration_specs(dim, k_img, k_txt), n_samples=n, shard_samples=4,
                    chunk_samples=4, dtype="float32", attrs={"kind": kind, "tokens": tokens, "sampled": sampled})
    g = torch.Generator().manual_seed(0)
    true = {s: torch.randn(dim, dim, generator=g) for s in ("img", "txt")}  # each stream its own map …
    for s, k in (("img", k_img), ("txt", k_txt)):
        x = torch.randn(n * k, dim, generator=g)
        w.append(f"block_in_{s}", x)
        w.append(f"residual_{s}", x @ true[s].T + 0.3 * torch.randn(n * k, dim, generator=g))  # … and noise
    w.append("temb", torch.randn(n, dim, generator=g))
    for name in ("prompt", "seed", "schedule_step"):
        w.append(name, torch.arange(n))
    w.append("timestep", torch.rand(n, generator=g))
    w.close()
    store = StoreReader(tmp_path / "cal.zarr")
    assert (row_weight(store, "img"), row_weight(store, "txt")) == (20.0, 2.0)  # not 1: the weights matter here

    sols, _ = solve_store(store, ridge=0.0, chunk_rows=5)
    assert set(sols) == set(streams)
    for stream in streams:
        sources = ("img", "txt") if stream == "joint" else (stream,)
        xs, rs = [], []
        for s in sources:
            x, r = store.read(f"block_in_{s}").double().numpy(), store.read(f"residual_{s}").double().numpy()
            root = np.sqrt(row_weight(store, s))
            xs.append(np.hstack([x, np.ones((len(x), 1))]) * root)
            rs.append(r * root)
        x, r = np.vstack(xs), np.vstack(rs)
        want = np.linalg.lstsq(x, r, rcond=None)[0]  # (D+1, D): [Wᵀ; bᵀ]
        np.testing.assert_allclose(sols[stream].weight.numpy(), want[:-1].T, rtol=1e-5, atol=1e-7)
        if stream == "joint":  # the unweighted fit is a different answer: the test can tell them apart
            plain = np.linalg.lstsq(np.vstack([a / np.sqrt(row_weight(store, s)) for a, s in zip(xs, sources)]),
                                    np.vstack([b / np.sqrt(row_weight(store, s)) for b, s in zip(rs, sources)]),
                                    rcond=None)[0]
            assert np.abs(plain - want).max() > 1e-2
