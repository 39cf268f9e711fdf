"""Prompt sets and their encoded form.

A prompt set is a text file, one prompt a line (blank lines and lines starting with ``#`` skipped).
Stage ``encode`` turns every set into a safetensors file of text states so that no later stage holds a
text encoder in memory while it generates. Each image to generate is a :class:`GenItem` — a prompt
index and a seed — so that generation can be batched or sharded across processes in any way and
still produce the same images.

The embedded default's judge scores an image by the digit its prompt names (:func:`label_of`): which
digit that is, is a property of the prompt's text, checked before any stage runs
(:func:`fastflux_core.preflight.check_metrics`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fastflux_core.errors import FastFluxError, ParamsError
from fastflux_core.io import read_tensors, save_tensors

if TYPE_CHECKING:
    from fastflux_core.params import PromptParams

SETS = ("calibration", "training", "importance", "evaluation")
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # digit words
_WORD = re.compile(r"\b(" + "|".join(NAMES) + r"|[0-9])\b")


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of one set, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FastFluxError(f"prompt file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise FastFluxError(f"prompt file is not UTF-8 text: {path} ({err.reason} at byte {err.start})") from None
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise FastFluxError(f"prompt file has no prompts: {path}")
    return prompts


@dataclass(frozen=True)
class GenItem:
    """One image to generate: which prompt of the set, and the seed of its initial noise."""

    prompt: int
    seed: int


def prompt_items(n_prompts: int, images_per_prompt: int, seed: int) -> list[GenItem]:
    """Items for a set: image r of prompt i gets seed ``seed + r * n_prompts + i`` (all distinct).

    >>> prompt_items(2, 2, 100)
    [GenItem(prompt=0, seed=100), GenItem(prompt=1, seed=101), GenItem(prompt=0, seed=102), GenItem(prompt=1, seed=103)]
    """
    return [GenItem(i, seed + r * n_prompts + i) for r in range(images_per_prompt) for i in range(n_prompts)]


def derive_seed(seed: int, *tags: object) -> int:
    """A seed for one purpose (e.g. ``derive_seed(params.seed, "lora", k)``): every random draw of the
    pipeline comes from params.seed through a named purpose, so two draws never share a stream and
    none depends on the order in which stages ran.

    >>> derive_seed(0, "capture", 1) == derive_seed(0, "capture", 1) != derive_seed(0, "capture", 2)
    True
    """
    digest = hashlib.sha256(json.dumps([seed, *map(str, tags)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def check_disjoint(prompts: "PromptParams") -> None:
    """Refuse prompt sets that share items (the paper keeps LS data, sandwich data, importance and
    evaluation prompts apart; a shared item lets a fitted model be scored on what it was fitted on),
    and a set that repeats a prompt (held-out splits are by prompt: a repeated prompt would be on
    both sides of one).

    ``prompts.disjoint: prompts`` — no prompt text in two sets; ``items`` — no (prompt text, seed)
    in two sets. Raises :class:`ParamsError` naming both sets and the first shared prompt."""
    seen: dict[str, tuple[str, str, int]] = {}  # key → (set, prompt, seed)
    for name in SETS:
        s = getattr(prompts, name)
        texts = read_prompt_file(s.file)
        repeated = sorted(t for t, n in Counter(texts).items() if n > 1)
        if repeated:  # the held-out split is by prompt: copies of one prompt would land on both sides of it
            lines = [i + 1 for i, t in enumerate(texts) if t == repeated[0]]
            raise ParamsError(f"prompt set {name} ({s.file}) repeats {len(repeated)} prompt(s), e.g. {repeated[0]!r} "
                              f"(prompts {', '.join(map(str, lines))}): each prompt once per set — more images of "
                              f"one prompt come from prompts.{name}.images_per_prompt")
        for it in prompt_items(len(texts), s.images_per_prompt, s.seed):
            text = texts[it.prompt]
            key = text if prompts.disjoint == "prompts" else f"{text}\0{it.seed}"
            other = seen.get(key)
            if other is not None and other[0] != name:
                what = "prompt" if prompts.disjoint == "prompts" else f"prompt and seed {it.seed}"
                raise ParamsError(
                    f"prompt sets {other[0]} ({getattr(prompts, other[0]).file}) and {name} ({s.file}) share the "
                    f"{what} {text!r}: the four sets must be disjoint (prompts.disjoint: {prompts.disjoint})")
            seen.setdefault(key, (name, text, it.seed))


@dataclass
class PromptEmbeds:
    """Encoded prompts: what the transformer takes as text conditioning — and, with classifier-free
    guidance (``sampling.true_cfg_scale`` > 1), the negative prompt's states beside them, which every
    sample's unconditional twin takes.

    >>> e = PromptEmbeds(["a", "b"], torch.ones(2, 3, 4), torch.ones(2, 5), (torch.zeros(1, 3, 4), torch.zeros(1, 5)))
    >>> states, pooled = e.select([1, 0, 1], negative=torch.tensor([False, True, False]))
    >>> states[:, 0, 0].tolist(), pooled.shape
    ([1.0, 0.0, 1.0], torch.Size([3, 5]))
    """

    prompts: list[str]
    prompt_embeds: torch.Tensor  # (N, T, D_text) → encoder_hidden_states
    pooled: torch.Tensor  # (N, D_pool) → pooled_projections
    negative: tuple[torch.Tensor, torch.Tensor] | None = None  # (1, T, D_text), (1, D_pool): the negative prompt

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.prompt_embeds.shape[0] != n or self.pooled.shape[0] != n:
            raise ValueError("prompt_embeds, pooled and prompts disagree on the number of prompts")
        if self.negative is not None and (self.negative[0].shape != (1, *self.prompt_embeds.shape[1:])
                                          or self.negative[1].shape != (1, *self.pooled.shape[1:])):
            raise ValueError("the negative prompt's states do not have the prompts' shapes")

    def select(self, index: list[int] | torch.Tensor, negative: torch.Tensor | bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, pooled) rows for the given prompt indices; where ``negative`` (one flag for
        all rows, or a (n,) bool per row) the negative prompt's states instead — an unconditional
        sample keeps its item's prompt index (held-out splits go by it)."""
        index = torch.as_tensor(index, dtype=torch.long)
        states, pooled = self.prompt_embeds[index], self.pooled[index]
        negative = torch.as_tensor(negative, dtype=torch.bool).expand(len(index))
        if not negative.any():
            return states, pooled
        if self.negative is None:
            raise FastFluxError("classifier-free guidance needs the negative prompt's states, and these encoded "
                                "prompts have none: re-run stage encode with sampling.true_cfg_scale > 1")
        neg_states, neg_pooled = self.negative
        return (torch.where(negative[:, None, None], neg_states.to(states.dtype), states),
                torch.where(negative[:, None], neg_pooled.to(pooled.dtype), pooled))

    def save(self, path: str | Path) -> None:
        tensors = {"prompt_embeds": self.prompt_embeds, "pooled": self.pooled}
        if self.negative is not None:  # only then: files made without guidance keep their bytes
            tensors.update(negative_prompt_embeds=self.negative[0], negative_pooled=self.negative[1])
        save_tensors(path, tensors, metadata={"prompts": json.dumps(self.prompts)})

    @classmethod
    def load(cls, path: str | Path) -> "PromptEmbeds":
        tensors, meta = read_tensors(path)
        negative = ((tensors["negative_prompt_embeds"], tensors["negative_pooled"])
                    if "negative_prompt_embeds" in tensors else None)
        return cls(json.loads(meta["prompts"]), tensors["prompt_embeds"], tensors["pooled"], negative)


def label_of(prompt: str) -> int:
    """The digit a prompt asks for, from its one number word or numeral.

    >>> label_of("a handwritten digit seven"), label_of("the digit 3")
    (7, 3)
    """
    found = {m.group(1) for m in _WORD.finditer(prompt.lower())}
    if len(found) != 1:
        raise ValueError(f"prompt must name exactly one digit: {prompt!r}")
    word = found.pop()
    return int(word) if word.isdigit() else NAMES.index(word)
