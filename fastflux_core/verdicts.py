"""How the experiments report decides a claim "a beats b": a paired test over runs, and an interval
over evaluation prompts.

Over runs: the same base and seed give both variants the same base model, captured tokens, LoRA init
and batches, so each (base, seed) is a pair; a paired t-test on the primary metric (FID against the
full model, lower is better) **supports** the claim when the mean paired difference favours a with
p < 0.05 and every base's mean difference does too, **contradicts** when all of that favours b, and
is **inconclusive** otherwise (:func:`paired`). Over evaluation items: the per-image features every
run's evaluate stage keeps are read at the run's revision (:class:`Items`), and a delete-one-prompt
jackknife gives the difference's 95 % interval (:func:`paired_fid_interval`); a verdict also needs
that interval to exclude 0 (:func:`with_items`).

>>> paired([3.0, 2.0, 4.0], [4.0, 3.1, 5.05])["verdict"]
'supports'
"""

from __future__ import annotations

import statistics
from pathlib import Path

from fastflux_core.experiments import REFERENCE_ITEMS, run_file  # REFERENCE_ITEMS: the base model's per-image features


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(a: list[float], b: list[float], lower_is_better: bool = True, bases: list[int] | None = None) -> dict:
    """Paired comparison of a metric of variants a and b over runs (same base and seed at each
    position): mean and std of b − a ("how much better a is" when lower is better), the t-test's p,
    how many bases (``bases[i]``: the base of position i) have a mean difference of the overall
    sign, and the verdict — which needs every base to agree.

    >>> paired([3.0, 2.0, 4.0, 3.0], [4.0, 3.1, 5.05, 2.5], bases=[0, 0, 1, 1])["verdict"]  # base 1 splits
    'inconclusive'
    """
    from scipy.stats import ttest_rel

    diff = [(y - x) if lower_is_better else (x - y) for x, y in zip(a, b)]  # > 0: a is better
    m, s = mean_std(diff)
    p = float(ttest_rel(a, b).pvalue) if len(diff) > 1 and s > 0 else (0.0 if m != 0 else 1.0)
    per_base: dict[int, list[float]] = {}
    for d, base in zip(diff, bases or [0] * len(diff)):
        per_base.setdefault(base, []).append(d)
    agree = sum(1 for ds in per_base.values() if statistics.fmean(ds) * m > 0)
    verdict = ("inconclusive" if p >= 0.05 or m == 0 or agree < len(per_base)
               else ("supports" if m > 0 else "contradicts"))
    return {"advantage_mean": m, "advantage_std": s, "p": p, "verdict": verdict, "per_seed": diff,
            "bases": len(per_base), "bases_agree": agree}


EVALUATE_ITEMS = "data/evaluate/items.safetensors"


class Items:
    """Per-image FID features of the experiments' evaluation items, read from each run's revision
    (its kept copy or DVC's cache, :func:`~fastflux_core.experiments.run_file`; once per file), for intervals over evaluation prompts of a paired difference.

    Why prompts, not single items: the images of one prompt (its seeds) are alike, so the prompt is
    the unit another evaluation set would redraw; the interval is a delete-one-prompt jackknife
    (:func:`~fastflux_core.stats.jackknife` over prompts), each prompt's images left out of every
    run at once — the runs share the evaluation items."""

    def __init__(self, repo: Path, images_per_prompt: int):
        self.repo, self.images_per_prompt = repo, images_per_prompt
        self._cache: dict[tuple[str, str], object] = {}
        self._intervals: dict[tuple, tuple[float, float] | None] = {}  # the headline and its section ask alike

    def features(self, rev: str | None, path: str):
        """(N, F) features of ``path`` at ``rev``, or None when it is not there (or not in the cache)."""
        if not rev:
            return None
        if (rev, path) not in self._cache:
            import numpy as np
            from safetensors.numpy import load

            data = run_file(self.repo, rev, path)  # None: an output no longer kept nor cached, no interval
            self._cache[rev, path] = None if data is None else np.asarray(load(data)["features"], dtype=np.float64)
        return self._cache[rev, path]

    def interval(self, pairs: list[tuple[str | None, str, str | None, str]]) -> tuple[float, float] | None:
        """95 % interval over prompts of the mean over runs of FID(b) − FID(a), each against its run's
        base images of the same items (``pairs``: (rev a, items file a, rev b, items file b) per run;
        > 0: a is better). None when some run's items are missing. Computed once per ``pairs``."""
        key = tuple(pairs)
        if key not in self._intervals:
            self._intervals[key] = self._interval(pairs)
        return self._intervals[key]

    def _interval(self, pairs: list[tuple[str | None, str, str | None, str]]) -> tuple[float, float] | None:
        runs = []
        for rev_a, path_a, rev_b, path_b in pairs:
            a, b, ref = self.features(rev_a, path_a), self.features(rev_b, path_b), self.features(rev_a, REFERENCE_ITEMS)
            if a is None or b is None or ref is None or not (len(a) == len(b) == len(ref)):
                return None
            runs.append((a, b, ref))
        return paired_fid_interval(runs, self.images_per_prompt) if runs else None


def paired_fid_interval(runs: list[tuple], images_per_prompt: int, level: float = 0.95) -> tuple[float, float] | None:
    """Delete-one-prompt jackknife interval of the mean over runs of FID(b, ref) − FID(a, ref) (``runs``:
    (a, b, ref) per run, (N, F) features of the same N items in item order, round-major: item i shows
    prompt i mod N/images_per_prompt); None with fewer than 3 prompts."""
    import numpy as np

    from fastflux_core.stats import frechet_distance, jackknife

    n_items = len(runs[0][0])
    n_prompts = n_items // images_per_prompt
    if n_prompts < 3:
        return None
    prompt_of = np.arange(n_items) % n_prompts

    def stat(prompts: np.ndarray) -> float:
        idx = np.flatnonzero(np.isin(prompt_of, prompts))
        return float(np.mean([frechet_distance(b[idx], r[idx]) - frechet_distance(a[idx], r[idx]) for a, b, r in runs]))

    return jackknife(stat, n_prompts, level)


def with_items(r: dict, interval: tuple[float, float] | None) -> dict:
    """A :func:`paired` result with the item interval of its difference: a verdict needs the interval
    to exclude 0 too (the difference holds on other evaluation prompts as well as over runs).

    >>> with_items({"verdict": "supports"}, (-0.1, 0.5))["verdict"], with_items({"verdict": "supports"}, (0.1, 0.5))["verdict"]
    ('inconclusive', 'supports')
    """
    out = {**r, "items": interval}
    if interval is not None and r["verdict"] != "inconclusive":
        lo, hi = interval
        if (r["verdict"] == "supports" and lo <= 0) or (r["verdict"] == "contradicts" and hi >= 0):
            out["verdict"] = "inconclusive"
    return out
