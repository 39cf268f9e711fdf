"""Four disjoint prompt sets for a real model, drawn from PartiPrompts.

PartiPrompts (P2; Yu et al. 2022, google-research/parti, Apache-2.0) holds 1,632 English prompts in 12
categories (Animals 314 … Indoor Scenes 40). A run needs four sets that share no prompt — calibration
(the least-squares data), training (the sandwiches'), importance (Eq. 2's ablations) and evaluation —
and a set whose categories differ from another's would make one set's numbers about other pictures
than the next's. So the split is stratified: within each category the prompts are shuffled with a
seed of their own (:func:`fastflux_core.prompts.derive_seed`), each prompt's position becomes its
quantile in its category, and all prompts sorted by that quantile are cut into consecutive sets. Every
set then takes the same share of every category, to within one prompt.

Sizes (``DEFAULT_SIZES``) follow the paper where it says: 512 images to solve the linear layers and 512
to train (§4.1, one image per prompt); importance 64 prompts (the paper does not size it: 12 ablations
per block's score on FLUX.1-dev are the cost that grows with it); evaluation the rest, 544.

Prompts are normalised to one line of single spaces (PartiPrompts has ten with outer spaces and one
with a double space inside; none has a line break); the files carry a header naming the source, its
licence (``LICENSE`` beside them) and the command.

>>> rows = [(f"{c} {i}", c) for c, n in (("a", 6), ("b", 3)) for i in range(n)]
>>> sets = split(rows, {"x": 6, "y": 3}, seed=0)
>>> [sorted(p.split()[0] for p in sets[s]) for s in ("x", "y")]
[['a', 'a', 'a', 'a', 'b', 'b'], ['a', 'a', 'b']]
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
from collections import Counter
from pathlib import Path

from fastflux_core.errors import FastFluxError
from fastflux_core.io import atomic_dir
from fastflux_core.prompts import SETS, derive_seed

DEFAULT_SIZES = {"calibration": 512, "training": 512, "importance": 64, "evaluation": 544}
SOURCE = "PartiPrompts (google-research/parti, PartiPrompts.tsv, commit 5a65797; Apache License 2.0: LICENSE)"


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """(prompt on one line, category) per row of PartiPrompts.tsv, in file order; a repeated prompt
    is kept once."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as err:
        raise FastFluxError(f"{path}: cannot read PartiPrompts.tsv ({err})") from None
    if not rows or not {"Prompt", "Category"} <= rows[0].keys():
        raise FastFluxError(f"{path}: not PartiPrompts.tsv (a tab-separated file with Prompt and Category columns)")
    seen: dict[str, str] = {}
    for r in rows:
        prompt = " ".join(r["Prompt"].split())
        if prompt and not prompt.startswith("#"):  # '#' starts a comment in a prompt file
            seen.setdefault(prompt, r["Category"].strip())
    return list(seen.items())


def split(rows: list[tuple[str, str]], sizes: dict[str, int], seed: int) -> dict[str, list[str]]:
    """``rows`` (prompt, category) into sets of ``sizes`` (in that order, summing to at most the
    prompts there are), each with every category's share to within one prompt."""
    if sum(sizes.values()) > len(rows):
        raise FastFluxError(f"the sets ask for {sum(sizes.values())} prompts, the file holds {len(rows)}")
    by_category: dict[str, list[str]] = {}
    for prompt, category in rows:
        by_category.setdefault(category, []).append(prompt)
    keyed = []
    for category, prompts in sorted(by_category.items()):
        order = list(prompts)
        random.Random(derive_seed(seed, "partiprompts", category)).shuffle(order)
        keyed += [((i + 0.5) / len(order), category, p) for i, p in enumerate(order)]  # its quantile in its category
    ranked = [p for _, _, p in sorted(keyed)]
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = ranked[start : start + n]
        start += n
    return out


def write_sets(sets: dict[str, list[str]], categories: dict[str, str], out: Path, license_file: Path,
               command: str) -> None:
    """One ``<set>.txt`` per set (a header, then one prompt a line) and the licence, written at once."""
    with atomic_dir(out) as tmp:
        for name, prompts in sets.items():
            counts = Counter(categories[p] for p in prompts)
            header = [f"# {name}: {len(prompts)} prompts from {SOURCE}",
                      f"# split by: {command}",
                      "# categories: " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items()))]
            (tmp / f"{name}.txt").write_text("\n".join(header + prompts) + "\n", encoding="utf-8")
        shutil.copyfile(license_file, tmp / "LICENSE")


def _sizes(text: str) -> dict[str, int]:
    try:
        sizes = {k: int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected set=count,…, got {text!r}") from None
    if set(sizes) != set(SETS) or min(sizes.values()) < 1:
        raise argparse.ArgumentTypeError(f"give a positive count for each of {', '.join(SETS)}")
    return sizes


def main(argv: list[str] | None = None, prog: str = "python -m fastflux_core.partiprompts") -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    ap.add_argument("--tsv", type=Path, default=Path("data/partiprompts/PartiPrompts.tsv"))
    ap.add_argument("--out", type=Path, default=Path("data/prompts/partiprompts"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES,
                    help="set=count for each set (default: " + ",".join(f"{k}={v}" for k, v in DEFAULT_SIZES.items()) + ")")
    args = ap.parse_args(argv)
    license_file = args.tsv.parent / "LICENSE"
    if not license_file.is_file():
        raise FastFluxError(f"{license_file} not found: PartiPrompts ships under its licence, keep LICENSE beside the file")
    rows = read_tsv(args.tsv)
    sets = split(rows, args.sizes, args.seed)
    sizes = ",".join(f"{k}={v}" for k, v in args.sizes.items())
    write_sets(sets, dict(rows), args.out, license_file, f"python -m fastflux_core.partiprompts --seed {args.seed} --sizes {sizes}")
    print(f"wrote {', '.join(f'{k} {len(v)}' for k, v in sets.items())} prompts to {args.out}/")


if __name__ == "__main__":
    from fastflux_core.cli import run_command

    run_command(main)
