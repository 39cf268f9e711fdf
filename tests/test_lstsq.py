"""Streamed least squares (paper Eq. 1) against numpy, affine recovery, ill-conditioning."""

import numpy as np
import pytest
import torch

from fastflux_core.lstsq import GramAccumulator, relative_residual


def _stream(acc, x, r, chunk):
    for s in range(0, len(x), chunk):
        acc.add(x[s : s + chunk], r[s : s + chunk])


def test_streamed_solve_equals_numpy_lstsq():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 24)) * rng.uniform(0.1, 10, size=24)
    r = np.tanh(x @ rng.normal(size=(24, 16))) + rng.normal(size=(3000, 16)) * 0.1
    acc = GramAccumulator(24, 16)
    _stream(acc, torch.from_numpy(x), torch.from_numpy(r), chunk=257)  # chunking that does not divide n
    sol = acc.solve(ridge=0.0)
    xa = np.hstack([x, np.ones((len(x), 1))])
    ref, *_ = np.linalg.lstsq(xa, r, rcond=None)
    ours = np.vstack([sol.weight.numpy().T, sol.bias.numpy()[None]])
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 1e-6
    assert sol.method == "cholesky" and sol.rows == 3000


def test_exact_affine_is_recovered_with_zero_residual():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    w, b = torch.randn(8, 8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    r = x @ w.T + b
    acc = GramAccumulator(8, 8)
    _stream(acc, x, r, 100)
    sol = acc.solve(ridge=0.0)
    torch.testing.assert_close(sol.weight, w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sol.bias, b, rtol=1e-9, atol=1e-9)
    assert relative_residual([(x, r, 1.0)], sol) < 1e-10


def test_rank_deficient_falls_back_and_ridge_helps():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(500, 3, generator=g, dtype=torch.float64)
    x = torch.cat([base, base[:, :1] * 2.0], dim=1)  # column 4 = 2 × column 1: XᵀX singular
    r = base @ torch.randn(3, 4, generator=g, dtype=torch.float64)
    acc = GramAccumulator(4, 4)
    acc.add(x, r)
    sol = acc.solve(ridge=0.0)
    assert sol.method == "eigh" and torch.isfinite(sol.weight).all()
    assert relative_residual([(x, r, 1.0)], sol) < 1e-8  # still the least-squares fit
    damped = acc.solve(ridge=1e-3)
    assert damped.method == "cholesky" and np.isfinite(damped.condition_number)


def test_row_weights_equal_repeated_rows():
    """Weight w on a chunk = that chunk's rows counted w times (how a single block's image and text
    rows are brought to their true share of the sequence)."""
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(60, 6, generator=g, dtype=torch.float64), torch.randn(20, 6, generator=g, dtype=torch.float64)
    r_img, r_txt = img @ torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(20, 6, generator=g, dtype=torch.float64)
    weighted = GramAccumulator(6, 6)
    weighted.add(img, r_img, weight=1.0)
    weighted.add(txt, r_txt, weight=3.0)
    repeated = GramAccumulator(6, 6)
    repeated.add(torch.cat([img, txt, txt, txt]), torch.cat([r_img, r_txt, r_txt, r_txt]))
    a, b = weighted.solve(ridge=1e-6), repeated.solve(ridge=1e-6)
    torch.testing.assert_close(a.weight, b.weight, rtol=1e-9, atol=1e-9)
    assert relative_residual([(img, r_img, 1.0), (txt, r_txt, 3.0)], a) == pytest.approx(
        relative_residual([(torch.cat([img, txt, txt, txt]), torch.cat([r_img, r_txt, r_txt, r_txt]), 1.0)], b))
    unweighted = GramAccumulator(6, 6)
    unweighted.add(torch.cat([img, txt]), torch.cat([r_img, r_txt]))
    assert not torch.allclose(unweighted.solve(ridge=1e-6).weight, b.weight, rtol=1e-3, atol=1e-3)
