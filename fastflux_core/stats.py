"""Uncertainty over evaluation items: percentile bootstrap, and FID read against its own floor.

A quality number of a pruned model is measured on one set of evaluation items (prompt, seed); another
set would give another number. :func:`bootstrap` redraws the items with replacement and recomputes
a mean (a per-image score), :func:`jackknife` leaves one item out at a time for FID (which a
resample's repeated images would bias), so a record can say ``fid 0.68 [0.61, 0.77]`` — the spread a
user would see on other items of the same kind. The spread over pruning seeds and base models is the report's business
(:mod:`fastflux_core.report`); a verdict needs both.

FID is biased upwards on finite samples, so a number alone does not say how far a model is from its
base. Two readings, from the images stage ``evaluate`` already has (nothing is generated twice):

- *paired*: the pruned model's images against the base's from the same noise — the score the
  pipeline has always reported; it tends to 0 as the pruned model tends to the base.
- *distributional*: the items are cut into two halves by seed (:func:`halves`: every prompt in
  both), and the pruned model's images of one half are scored against the base's of the other.
  The base's own halves against each other give the *floor* — what FID reads for a model identical
  to the base at this sample size — and ``excess = distributional − floor`` is the distance that is
  the pruned model's.

>>> import numpy as np
>>> x = np.arange(10.0)
>>> draws = bootstrap(lambda idx: float(x[idx].mean()), len(x), reps=200, seed=0)
>>> lo, hi = interval(draws)
>>> bool(lo < x.mean() < hi), len(draws)
(True, 200)
>>> halves(n_items=6, n_prompts=2)  # items are round-major: rounds 0 and 2 vs round 1
(array([0, 1, 4, 5]), array([2, 3]))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def bootstrap(stat: Callable[[np.ndarray], float], n: int, reps: int, seed: int,
              strata: list[np.ndarray] | None = None) -> np.ndarray:
    """(reps,) values of ``stat(idx)`` over ``reps`` resamples of the item indices 0..n-1, drawn with
    replacement (within each of ``strata`` separately when given, so each resample keeps their
    sizes). Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    groups = strata if strata is not None else [np.arange(n)]
    out = np.empty(reps)
    for r in range(reps):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        out[r] = stat(idx)
    return out


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval holding ``level`` of the draws."""
    tail = (100 - 100 * level) / 2  # 2.5 for 0.95 (100 * (1 - 0.95) / 2 is 2.4999…)
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)


def halves(n_items: int, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Item indices of the even and the odd seed rounds (:func:`fastflux_core.prompts.prompt_items`
    orders items round by round: item j is prompt j mod P at round j // P), so both halves hold
    every prompt and no seed is in both; with one image per prompt, every other prompt.

    >>> halves(n_items=3, n_prompts=3)
    (array([0, 2]), array([1]))
    """
    rounds = np.arange(n_items) // n_prompts if n_items >= 2 * n_prompts else np.arange(n_items)
    return np.flatnonzero(rounds % 2 == 0), np.flatnonzero(rounds % 2 == 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets ``a`` (n_a, F) and ``b`` (n_b, F) — ‖μ_a − μ_b‖² + Tr Σ_a + Tr Σ_b −
    2 Tr (Σ_a Σ_b)^½ with sample covariances (ddof 1, as clean-fid) — computed exactly and cheaply.

    With fewer images than features (Inception: F = 2048) the covariances have rank < n, and the
    eigenvalues of Σ_a Σ_b are those of C Cᵀ / ((n_a − 1)(n_b − 1)), C = A_c B_cᵀ (n_a × n_b, the
    centred features): Tr (Σ_a Σ_b)^½ is C's nuclear norm over √((n_a − 1)(n_b − 1)) — one SVD of an
    n × n matrix instead of the square root of a 2048² one (21 s here, 4 per bootstrap resample).
    Otherwise it is Σ √λ of Σ_a^½ Σ_b Σ_a^½ (symmetric eigendecompositions).

    >>> g = np.random.default_rng(0)
    >>> x, y = g.normal(size=(30, 5)), g.normal(size=(40, 5)) + 1.0
    >>> from cleanfid.fid import frechet_distance as clean
    >>> bool(np.isclose(frechet_distance(x, y), clean(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))))
    True
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ca, cb = a - a.mean(0), b - b.mean(0)
    ka, kb = len(a) - 1, len(b) - 1
    diff = a.mean(0) - b.mean(0)
    traces = (ca**2).sum() / ka + (cb**2).sum() / kb
    if min(len(a), len(b)) <= a.shape[1]:
        cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(ka * kb)
    else:
        vals, vecs = np.linalg.eigh(ca.T @ ca / ka)
        half = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T  # Σ_a^½
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(half @ (cb.T @ cb / kb) @ half), 0, None)).sum()
    return max(0.0, float(diff @ diff + traces - 2 * cross))


def jackknife(stat: Callable[[np.ndarray], float], n: int, level: float = 0.95) -> tuple[float, float]:
    """The normal interval θ ± z·se around θ = stat(all items), se the delete-one jackknife's:
    √((n − 1)/n · Σ (θ_(i) − θ̄)²). For FID, not a bootstrap: a resample with repeated images has a
    covariance of lower rank, and with fewer images than features its FID is biased upwards so far
    that a percentile interval can miss the value it is an interval for.

    >>> x = np.array([1.0, 2.0, 4.0, 7.0])
    >>> lo, hi = jackknife(lambda idx: float(x[idx].mean()), len(x))
    >>> round((hi - lo) / 2 / 1.959964, 6) == round(float(x.std(ddof=1) / 2), 6)  # the mean's: s/√n
    True
    """
    from scipy.stats import norm

    full = np.arange(n)
    theta = stat(full)
    loo = np.array([stat(np.delete(full, i)) for i in range(n)])
    se = float(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()))
    z = float(norm.ppf(0.5 + level / 2))
    return theta - z * se, theta + z * se


def fid_readings(fid: Callable[[np.ndarray, np.ndarray], float], pruned: np.ndarray, base: np.ndarray,
                 n_prompts: int, intervals: bool, level: float = 0.95) -> dict[str, float]:
    """Distributional FID, its floor and the excess above the floor (module docstring), and with
    ``intervals`` jackknife intervals over items (:func:`jackknife`) of these and of the paired FID
    (``fid_ci_low``/``high``: the paired value itself is the stage's ``fid``). ``fid(a, b)`` is the
    Fréchet distance between feature sets a and b; ``pruned`` and ``base`` are (N, F) features of the
    same items in item order."""
    a, b = halves(len(pruned), n_prompts)
    out: dict[str, float] = {}
    if intervals:
        out["fid_ci_low"], out["fid_ci_high"] = jackknife(lambda idx: fid(pruned[idx], base[idx]), len(pruned), level)
    if min(len(a), len(b)) < 3:  # a covariance needs two images a side, and so does each jackknife leave-one-out
        return out

    def readings(keep: np.ndarray) -> tuple[float, float, float]:
        ka, kb = a[np.isin(a, keep)], b[np.isin(b, keep)]
        floor = fid(base[ka], base[kb])
        dist = 0.5 * (fid(pruned[ka], base[kb]) + fid(pruned[kb], base[ka]))
        return dist, floor, dist - floor

    out["fid_dist"], out["fid_floor"], out["fid_excess"] = readings(np.arange(len(pruned)))
    if intervals:
        for j, key in enumerate(("fid_dist", "fid_floor", "fid_excess")):
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = jackknife(lambda idx: readings(idx)[j], len(pruned), level)
    return out


def mean_readings(name: str, values: np.ndarray, reps: int, seed: int, base: np.ndarray | None = None,
                  level: float = 0.95) -> dict[str, float]:
    """A bootstrap interval over items of the mean of per-image ``values`` (``name_ci_low``/``high``;
    the mean itself is the stage's ``name``); with ``base`` (the base model's values of the same
    items) also the paired change ``name_change`` = mean(values − base) and its interval.

    >>> r = mean_readings("clip", np.array([0.9, 0.8, 1.0]), 100, 0, base=np.array([1.0, 1.0, 1.0]))
    >>> round(r["clip_change"], 6), r["clip_change_ci_high"] <= 0
    (-0.1, True)
    """
    out = {}
    if base is not None:
        out[f"{name}_change"] = float((values - base).mean())
    if reps:
        draws = bootstrap(lambda idx: float(values[idx].mean()), len(values), reps, seed)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval(draws, level)
        if base is not None:
            diff = values - base
            draws = bootstrap(lambda idx: float(diff[idx].mean()), len(values), reps, seed)
            out[f"{name}_change_ci_low"], out[f"{name}_change_ci_high"] = interval(draws, level)
    return out
