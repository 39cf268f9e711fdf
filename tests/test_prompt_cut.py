"""A prompt longer than ``text.max_sequence_length`` tokens is cut by its encoder (issue 30, 13): the
default's prompts and the base's captions all keep their digit, a cut that loses an embedded prompt's
digit is refused, any other cut is one warning line naming the prompt (the embedded encoder, MiniLM)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fastflux_core import digits
from fastflux_core.errors import FastFluxError
from fastflux_core.params_file import read_params
from fastflux_core.prompts import SETS, read_prompt_file
from fastflux_core.text import MiniLMTextEncoder, check_cut

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder(read_params(ROOT / "params.yaml").text.max_sequence_length, torch.device("cpu"))


def test_the_defaults_prompts_and_captions_are_not_cut(encoder, monkeypatch):
    monkeypatch.chdir(ROOT)
    params = read_params("params.yaml")
    for name in SETS:
        file = getattr(params.prompts, name).file
        assert check_cut(encoder, read_prompt_file(file), file, digits=True) == {}, file
    assert check_cut(encoder, digits.captions()[0], "captions", digits=True) == {}


def test_a_cut_that_loses_the_digit_is_refused_any_other_is_named(encoder, capsys):
    assert encoder.max_sequence_length == 8  # [CLS] an image of a hand ##written | seven [SEP]
    prompts = ["the digit 7", "an image of a handwritten seven", "seven, an image of a handwritten digit"]
    with pytest.raises(FastFluxError, match=r"^set x: the prompt 'an image of a handwritten seven' is longer than "
                                            r"text\.max_sequence_length \(8 tokens\) and is cut to "
                                            r"'an image of a handwritten', which loses the digit the prompt names"):
        check_cut(encoder, prompts, "set x", digits=True)
    assert check_cut(encoder, prompts[2:], "set x", digits=True) == {prompts[2]: "seven, an image of a"}
    capsys.readouterr()
    assert check_cut(encoder, prompts, "set x", digits=False) == {prompts[1]: "an image of a handwritten",
                                                                   prompts[2]: "seven, an image of a"}
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: set x: 2 of 3 prompts are longer than text.max_sequence_length (8 tokens) and are cut: "
                   "'an image of a handwritten seven' → 'an image of a handwritten'; "
                   "'seven, an image of a handwritten digit' → 'seven, an image of a'"]


def test_a_prompt_that_names_no_digit_is_only_named_even_in_a_digit_run(encoder, capsys):
    # a calibration caption names no digit: there is none to lose, so a cut is a warning, not a refusal
    prompt = "an image of a plain white square of paper"
    assert check_cut(encoder, [prompt], "calibration", digits=True) == {prompt: "an image of a plain white"}
    assert "warning: calibration: 1 of 1 prompts" in capsys.readouterr().err


def test_a_flux_folder_cuts_at_t5s_tokens_and_its_embeddings_end_there(tiny_flux_folder):
    """The tiny folder's T5 tokenizer is MiniLM's WordPiece: 8 tokens are [CLS] + six words + [SEP]."""
    from fastflux_core.flux import FluxTextEncoders

    enc = FluxTextEncoders(tiny_flux_folder, 8, torch.device("cpu"), torch.float32)
    prompt = "a photograph of a red bicycle leaning on a wall"
    assert check_cut(enc, [prompt, "a red bicycle"], "set z", digits=False) == {prompt: "a photograph of a red bicycle"}
    long, kept = enc.encode([prompt, "a photograph of a red bicycle"])[0]  # T5's token states, (8, D) each
    assert torch.equal(long, kept)  # the transformer sees the cut prompt, nothing of what was cut
