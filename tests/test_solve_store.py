"""Solve on a captured store: the plain and the timestep-aware (``solve.condition: temb``) BRLL are
numpy's weighted ridge least squares on the store's rows. The chain is tests/chain_fixture.py's."""

import numpy as np
import pytest
import torch

from fastflux_core.solve import row_weight, solve_store


def test_solve_is_numpy_least_squares_with_token_weights(chain):
    cal, _ = chain["stores"][0]
    metrics, _, sols = chain["records"][0]
    assert set(metrics) == {"joint"}  # single block: one shared linear over both streams
    rows = []
    for s in ("img", "txt"):
        x, r = cal.read(f"block_in_{s}").double().numpy(), cal.read(f"residual_{s}").double().numpy()
        rows.append((np.hstack([x, np.ones((len(x), 1))]) * np.sqrt(row_weight(cal, s)), r * np.sqrt(row_weight(cal, s))))
    x, r = np.vstack([a for a, _ in rows]), np.vstack([b for _, b in rows])
    ridge = chain["params"].solve.ridge * np.mean(np.diag(x.T @ x)[:-1])
    a = x.T @ x + ridge * np.diag([1.0] * (x.shape[1] - 1) + [0.0])
    want = np.linalg.solve(a, x.T @ r)  # (D+1, D): [Wᵀ; bᵀ]
    np.testing.assert_allclose(sols["joint"].weight.numpy(), want[:-1].T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sols["joint"].bias.numpy(), want[-1], rtol=1e-6, atol=1e-8)
    res = np.linalg.norm(r - x @ want) / np.linalg.norm(r)
    assert metrics["joint"]["relative_residual"] == pytest.approx(res, rel=1e-6)
    assert set(chain["records"][1][0]) == {"img", "txt"}  # double block: one per stream


def test_timestep_aware_solve_is_numpy_least_squares_on_x_and_silu_temb(chain):
    """solve.condition: temb — each row's features are [x; silu(temb of its sample); 1], weighted by
    N/k per stream; the solution's weight is [W | U], and it fits the rows no worse than plain BRLL."""
    cal, _ = chain["stores"][0]
    sols, metrics = solve_store(cal, chain["params"].solve.ridge, 7, condition="temb")
    silu = torch.nn.functional.silu(cal.read("temb").float()).double().numpy()  # (samples, D), as the solve takes it
    rows = []
    for s in ("img", "txt"):
        x, r = cal.read(f"block_in_{s}").double().numpy(), cal.read(f"residual_{s}").double().numpy()
        t = silu[np.arange(len(x)) // cal.attrs["sampled"][s]]
        w = np.sqrt(row_weight(cal, s))
        rows.append((np.hstack([x, t, np.ones((len(x), 1))]) * w, r * w))
    x, r = np.vstack([a for a, _ in rows]), np.vstack([b for _, b in rows])
    ridge = chain["params"].solve.ridge * np.mean(np.diag(x.T @ x)[:-1])
    want = np.linalg.solve(x.T @ x + ridge * np.diag([1.0] * (x.shape[1] - 1) + [0.0]), x.T @ r)  # (2D+1, D)
    np.testing.assert_allclose(sols["joint"].weight.numpy(), want[:-1].T, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sols["joint"].bias.numpy(), want[-1], rtol=1e-5, atol=1e-7)
    res = np.linalg.norm(r - x @ want) / np.linalg.norm(r)
    assert metrics["joint"]["relative_residual"] == pytest.approx(res, rel=1e-6)
    assert metrics["joint"]["relative_residual"] <= metrics["joint"]["relative_residual_plain"]
