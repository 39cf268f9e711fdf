"""Prompt sets and their encoded form.

A prompt set is a text file, one prompt a line (blank lines and lines starting with ``#`` skipped).
Stage ``encode`` turns every set into a safetensors file of text states so that no later stage holds a
text encoder in memory while it generates. Each image to generate is a :class:`GenItem` — a prompt
index and a seed — so that generation can be batched or sharded across processes in any way and
still produce the same images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fastflux_core.errors import FastFluxError
from fastflux_core.io import load_tensors, save_tensors


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of one set, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FastFluxError(f"prompt file not found: {path}")
    prompts = [ln.strip() for ln in path.read_text().splitlines()]
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


@dataclass
class PromptEmbeds:
    """Encoded prompts: what the transformer takes as text conditioning."""

    prompts: list[str]
    prompt_embeds: torch.Tensor  # (N, T, D_text) → encoder_hidden_states
    pooled: torch.Tensor  # (N, D_pool) → pooled_projections

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if self.prompt_embeds.shape[0] != n or self.pooled.shape[0] != n:
            raise ValueError("prompt_embeds, pooled and prompts disagree on the number of prompts")

    def select(self, index: list[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, pooled) rows for the given prompt indices."""
        index = torch.as_tensor(index, dtype=torch.long)
        return self.prompt_embeds[index], self.pooled[index]

    def save(self, path: str | Path) -> None:
        save_tensors(
            path,
            {"prompt_embeds": self.prompt_embeds, "pooled": self.pooled},
            metadata={"prompts": json.dumps(self.prompts)},
        )

    @classmethod
    def load(cls, path: str | Path) -> "PromptEmbeds":
        from safetensors import safe_open

        tensors = load_tensors(path)
        with safe_open(str(path), framework="pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
        return cls(prompts, tensors["prompt_embeds"], tensors["pooled"])
