"""The PartiPrompts sets shipped in data/prompts/partiprompts/ (issue 31, 4): what the command writes
from the shipped PartiPrompts.tsv (no hand edits), disjoint, every prompt used once, each category's
share the same in every set to within one prompt, the licence beside them."""

from __future__ import annotations

import filecmp
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fastflux_core.errors import FastFluxError
from fastflux_core.partiprompts import DEFAULT_SIZES, main, read_tsv, split
from fastflux_core.prompts import SETS, read_prompt_file

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "partiprompts"
SHIPPED = ROOT / "data" / "prompts" / "partiprompts"


def test_the_shipped_sets_are_what_the_command_writes(tmp_path):
    main(["--tsv", str(SOURCE / "PartiPrompts.tsv"), "--out", str(tmp_path / "sets")])
    for f in [*(f"{s}.txt" for s in SETS), "LICENSE"]:
        assert filecmp.cmp(tmp_path / "sets" / f, SHIPPED / f, shallow=False), f
    assert filecmp.cmp(SHIPPED / "LICENSE", SOURCE / "LICENSE", shallow=False)


def test_sets_are_disjoint_category_balanced_and_use_every_prompt():
    rows = read_tsv(SOURCE / "PartiPrompts.tsv")
    category = dict(rows)
    sets = {s: read_prompt_file(SHIPPED / f"{s}.txt") for s in SETS}
    assert {s: len(p) for s, p in sets.items()} == DEFAULT_SIZES
    every = [p for prompts in sets.values() for p in prompts]
    assert len(every) == len(set(every)) == len(rows) == 1632  # disjoint, none repeated, all used
    totals = Counter(category.values())
    for name, prompts in sets.items():
        got = Counter(category[p] for p in prompts)
        for c, n in totals.items():  # the set's share of each category, to within one prompt
            assert abs(got[c] - n * len(prompts) / len(rows)) < 1, (name, c, got[c])


def test_another_seed_draws_other_sets_with_the_same_balance():
    rows = read_tsv(SOURCE / "PartiPrompts.tsv")
    a, b = split(rows, DEFAULT_SIZES, 0), split(rows, DEFAULT_SIZES, 1)
    assert set(a["importance"]) != set(b["importance"])
    count = lambda prompts: Counter(dict(rows)[p] for p in prompts)  # noqa: E731
    assert all(abs(count(a[s])[c] - count(b[s])[c]) <= 1 for s in SETS for c in count(a[s]))


def test_bad_input(tmp_path):
    shutil.copy(SOURCE / "PartiPrompts.tsv", tmp_path)
    with pytest.raises(FastFluxError, match=r"LICENSE not found: PartiPrompts ships under its licence"):
        main(["--tsv", str(tmp_path / "PartiPrompts.tsv"), "--out", str(tmp_path / "sets")])
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(FastFluxError, match=r"not PartiPrompts\.tsv"):
        read_tsv(tmp_path / "other.tsv")
    with pytest.raises(FastFluxError, match=r"the sets ask for 2000 prompts, the file holds 1632"):
        split(read_tsv(SOURCE / "PartiPrompts.tsv"), {**DEFAULT_SIZES, "evaluation": 912}, 0)
    assert not (tmp_path / "sets").exists()
