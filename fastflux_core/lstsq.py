"""Streaming least squares for BRLL (paper Eq. 1): W* = (f(X) − ...)·Xᵀ(XXᵀ)⁻¹ with a bias row.

With rows x (D_in) and targets r = f(x) (the block's residual output), augment x̃ = [x; 1] and solve

    (X̃ᵀX̃ + λ·s·I₀) [Wᵀ; bᵀ] = X̃ᵀR,        s = mean(diag(XᵀX)), I₀ = identity without the bias entry

accumulating the Gram matrix X̃ᵀX̃ (D+1)² and the cross term X̃ᵀR (D+1)×D in float64, one chunk of
rows at a time, so the token count never has to fit in memory. Cholesky first; if the system is not
numerically positive definite, an eigendecomposition with small eigenvalues cut off (a pseudo-inverse).
A second pass over the data measures the relative residual ‖R − X̃W̃‖_F / ‖R‖_F.

>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(500, 3, generator=g, dtype=torch.float64)
>>> r = x @ torch.tensor([[1., 2., 0.], [0., 1., 0.], [3., 0., 1.]], dtype=torch.float64).T + 0.5
>>> acc = GramAccumulator(3, 3); acc.add(x, r)
>>> sol = acc.solve(ridge=0.0)
>>> round(float(sol.bias[0]), 6), round(float(sol.weight[0, 1]), 6)
(0.5, 2.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass
class Solution:
    weight: torch.Tensor  # (D_out, D_in) — nn.Linear layout
    bias: torch.Tensor  # (D_out,)
    method: str  # "cholesky" or "eigh"
    condition_number: float  # of the (regularised) normal matrix
    rows: int


class GramAccumulator:
    """Accumulates X̃ᵀX̃ and X̃ᵀR in float64 (on ``device``: the GPU when there is one)."""

    def __init__(self, d_in: int, d_out: int, device: torch.device | str = "cpu"):
        self.gram = torch.zeros(d_in + 1, d_in + 1, dtype=torch.float64, device=device)
        self.cross = torch.zeros(d_in + 1, d_out, dtype=torch.float64, device=device)
        self.rows = 0
        self.device = device

    def add(self, x: torch.Tensor, r: torch.Tensor, weight: float = 1.0) -> None:
        """x (n, D_in), r (n, D_out): add one chunk, every row counted ``weight`` times."""
        x = x.to(self.device, torch.float64)
        r = r.to(self.device, torch.float64)
        sx = weight * x.sum(0)
        d = x.shape[1]
        self.gram[:d, :d].addmm_(x.T, x, alpha=weight)  # w·XᵀX
        self.gram[:d, d] += sx
        self.gram[d, :d] += sx
        self.gram[d, d] += weight * x.shape[0]
        self.cross[:d].addmm_(x.T, r, alpha=weight)  # w·XᵀR
        self.cross[d] += weight * r.sum(0)
        self.rows += x.shape[0]

    def solve(self, ridge: float) -> Solution:
        if self.rows == 0:
            raise ValueError("no rows accumulated")
        d = self.gram.shape[0] - 1
        a = self.gram.clone()
        scale = torch.diagonal(a)[:d].mean().clamp(min=1e-300)
        a[range(d), range(d)] += ridge * scale
        eig = torch.linalg.eigvalsh(a)
        cond = float(eig[-1].abs() / eig[0].abs().clamp(min=1e-300)) if eig[0] > 0 else float("inf")
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0 and cond < 1e14:
            sol, method = torch.cholesky_solve(self.cross, chol), "cholesky"
        else:  # ill-conditioned: pseudo-inverse through the eigendecomposition
            vals, vecs = torch.linalg.eigh(a)
            keep = vals > vals.max() * 1e-12
            inv = torch.where(keep, 1.0 / vals, torch.zeros_like(vals))
            sol, method = vecs @ (inv[:, None] * (vecs.T @ self.cross)), "eigh"
        return Solution(sol[:d].T.contiguous(), sol[d].clone(), method, cond, self.rows)


def residual_sums(pairs: Iterable[tuple[torch.Tensor, torch.Tensor, float]], sol: Solution) -> tuple[float, float]:
    """(‖R − (XWᵀ + b)‖²_F, ‖R‖²_F) over streamed (x, r, row weight) chunks, in float64: sums that
    data-parallel ranks add before the ratio is taken."""
    num = den = 0.0
    w, b = sol.weight.double(), sol.bias.double()
    for x, r, weight in pairs:
        x, r = x.to(w.device, torch.float64), r.to(w.device, torch.float64)
        num += weight * float(((r - (x @ w.T + b)) ** 2).sum())
        den += weight * float((r**2).sum())
    return num, den


def relative_residual(pairs: Iterable[tuple[torch.Tensor, torch.Tensor, float]], sol: Solution) -> float:
    """‖R − (XWᵀ + b)‖_F / ‖R‖_F over streamed (x, r, row weight) chunks, in float64."""
    num, den = residual_sums(pairs, sol)
    return (num / den) ** 0.5 if den > 0 else 0.0
