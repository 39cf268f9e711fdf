"""Intervals over evaluation items (fastflux_core/stats.py): the bootstrap is the textbook one, computed
directly; the FID floor is what a model identical to its base reads; a model off its base reads above it."""

import numpy as np
import pytest

from fastflux_core.metrics import FeatureStats, fid
from fastflux_core.stats import bootstrap, fid_readings, halves, interval, jackknife, mean_readings


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    return fid(a, FeatureStats.of(b))


def test_bootstrap_is_the_direct_computation():
    values = np.random.default_rng(5).normal(size=37)
    draws = bootstrap(lambda idx: float(values[idx].mean()), len(values), reps=300, seed=11)
    rng = np.random.default_rng(11)  # the same draws, written out
    direct = np.array([values[rng.integers(0, 37, 37)].mean() for _ in range(300)])
    np.testing.assert_array_equal(draws, direct)
    assert interval(draws) == tuple(np.percentile(direct, [2.5, 97.5]))
    lo, hi = interval(draws)
    se = values.std(ddof=1) / np.sqrt(len(values))  # the normal-theory interval agrees roughly
    assert lo == pytest.approx(values.mean() - 1.96 * se, abs=0.5 * se)
    assert hi == pytest.approx(values.mean() + 1.96 * se, abs=0.5 * se)


def test_paired_change_interval_resamples_items_jointly():
    base = np.random.default_rng(0).uniform(size=50)
    pruned = base - 0.05 + np.random.default_rng(1).normal(scale=0.01, size=50)
    r = mean_readings("clip", pruned, reps=400, seed=3, base=base)
    assert r["clip_change"] == pytest.approx(float((pruned - base).mean()))
    assert r["clip_change_ci_low"] < r["clip_change"] < r["clip_change_ci_high"] < 0  # paired: tight, below 0
    assert r["clip_ci_high"] - r["clip_ci_low"] > 5 * (r["clip_change_ci_high"] - r["clip_change_ci_low"])


def test_halves_hold_every_prompt_and_no_seed_twice():
    a, b = halves(n_items=20 * 10, n_prompts=20)
    assert len(a) == len(b) == 100 and not set(a) & set(b)
    assert sorted(a % 20) == sorted(b % 20) == sorted(list(range(20)) * 5)


def test_fid_floor_and_excess():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 4))  # 20 prompts × 20 seeds, item order
    same = fid_readings(_fid, base, base, n_prompts=20, intervals=True)
    assert same["fid_floor"] > 0  # finite samples: the base against itself on other seeds
    assert same["fid_excess"] == pytest.approx(0.0, abs=1e-9)
    off = fid_readings(_fid, base + 0.5, base, n_prompts=20, intervals=True)
    assert off["fid_floor"] == same["fid_floor"]
    assert off["fid_excess"] == pytest.approx(4 * 0.5**2, rel=0.05)  # ‖Δμ‖² of a pure shift
    assert 0 < off["fid_excess_ci_low"] < off["fid_excess"] < off["fid_excess_ci_high"]
    assert off["fid_ci_low"] < _fid(base + 0.5, base) < off["fid_ci_high"]


def test_frechet_distance_with_fewer_images_than_features_is_clean_fids():
    """The n × n route (Inception features: 2048 dimensions, a few hundred images) gives clean-fid's
    number without the square root of a 2048² matrix."""
    from fastflux_core.stats import frechet_distance

    g = np.random.default_rng(1)
    x, y = g.normal(size=(50, 80)), g.normal(size=(60, 80)) * 1.1 + 0.2
    assert frechet_distance(x, y) == pytest.approx(_fid(x, y), rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_fid_intervals_hold_their_own_value_with_fewer_images_than_features():
    """Judge features are 128-d and an evaluation half 100 images: a resample with repeated images
    reads FIDs far above the value (the bootstrap interval of the default run missed it: fid_dist
    6.9, 'interval' [11.3, 22.8]); the jackknife's is centred on it."""
    from fastflux_core.stats import frechet_distance

    g = np.random.default_rng(2)
    base = g.normal(size=(200, 128))
    pruned = base + g.normal(scale=0.3, size=base.shape)
    r = fid_readings(frechet_distance, pruned, base, n_prompts=20, intervals=True)
    for key in ("fid_dist", "fid_floor", "fid_excess"):
        assert r[f"{key}_ci_low"] < r[key] < r[f"{key}_ci_high"], key
    paired = frechet_distance(pruned, base)
    assert r["fid_ci_low"] < paired < r["fid_ci_high"]
    lo, hi = jackknife(lambda idx: float(base[idx, 0].mean()), 200)
    se = base[:, 0].std(ddof=1) / np.sqrt(200)
    assert (hi - lo) / 2 == pytest.approx(1.959964 * se, rel=1e-5)  # the mean's jackknife is s/√n
