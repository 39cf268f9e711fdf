"""A prompt longer than ``text.max_sequence_length`` tokens is cut by its encoder (issue 30, 13): the
default's prompts and the base's captions all keep their digit, a cut that loses an embedded prompt's
digit is refused, any other cut is one warning line naming the prompt (the embedded encoder, MiniLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastflux_core import digits
from fastflux_core.errors import FastFluxError
from fastflux_core.params import read_params
from fastflux_core.prompts import SETS, read_prompt_file
from fastflux_core.text import MiniLMTextEncoder, check_cut

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder(read_params(ROOT / "params.yaml", trace=False).text.max_sequence_length, torch.device("cpu"))


def test_the_defaults_prompts_and_captions_are_not_cut(encoder, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = read_params("params.yaml", trace=False)
    for name in SETS:
        file = getattr(params.prompts, name).file
        assert check_cut(encoder, read_prompt_file(file), file, digits=True) == {}, file
    assert check_cut(encoder, digits.captions()[0], "captions", digits=True) == {}


def test_a_cut_that_loses_the_digit_is_refused_any_other_is_named(encoder, capsys):
    assert encoder.max_sequence_length == 8  # [CLS] an image of a hand ##written | seven [SEP]
    prompts = ["the digit 7", "an image of a handwritten seven", "seven, an image of a handwritten digit"]
    with pytest.raises(FastFluxError, match=r"^set x: the prompt 'an image of a handwritten seven' is longer than "
                                            r"text\.max_sequence_length \(8 tokens\) and is cut to "
                                            r"'an image of a handwritten', which loses the digit the judge scores"):
        check_cut(encoder, prompts, "set x", digits=True)
    assert check_cut(encoder, prompts[2:], "set x", digits=True) == {prompts[2]: "seven, an image of a"}
    capsys.readouterr()
    assert check_cut(encoder, prompts, "set x", digits=False) == {prompts[1]: "an image of a handwritten",
                                                                   prompts[2]: "seven, an image of a"}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: set x: 2 of 3 prompts are longer than text.max_sequence_length (8 tokens) and are cut: "
                   "'an image of a handwritten seven' → 'an image of a handwritten'; "
                   "'seven, an image of a handwritten digit' → 'seven, an image of a'"]
