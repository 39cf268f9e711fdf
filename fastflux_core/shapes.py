"""Sizes of a run, known without building a model: the base transformer's config, the sequence
lengths and widths at the configured resolution, and the bytes of the arrays capture@k writes
(:func:`fastflux_core.store.calibration_specs` / :func:`~fastflux_core.store.training_specs`).

Light on purpose: the sizes come from json configs read through each family's layout
(:mod:`fastflux_core.layouts`, whose families name their published configs for a budget whose folder is
not there yet), never diffusers. Stage ``validate`` sizes the activation stores against
free disk on every ``dvc repro`` from these alone, and the memory estimator (:mod:`fastflux_core.stage_peaks`) builds its fake
models from the same configs.

>>> from fastflux_core.store import calibration_specs, estimate_bytes
>>> specs = calibration_specs(3072, 64, 16)  # FLUX.1-dev's width, 64 image + 16 text tokens per sample
>>> estimate_bytes(specs, 2048, "bfloat16") / 1e9  # 512 images × 4 timesteps: one calibration store
2.025906176
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastflux_core.errors import ModelFolderError
from fastflux_core.layouts import (EMBEDDED_BASE_CONFIG, EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS,
                                   embedded_transformer_config, layout, layout_of_config)
from fastflux_core.params import capture_schedule
from fastflux_core.published import REFERENCE_CONFIGS
from fastflux_core.store import calibration_specs, estimate_bytes, training_specs

if TYPE_CHECKING:
    from fastflux_core.params import CaptureParams, ModelParams, Params, SamplingParams

def transformer_config(params: Params) -> dict:
    """The base transformer's config: the model folder's, the embedded base's, or (a folder not there
    yet, for the budget) the family's published one (:mod:`fastflux_core.published`)."""
    if params.model.source != "embedded":
        return folder_config(params.model, "transformer")
    if EMBEDDED_BASE_CONFIG.is_file():
        return json.loads(EMBEDDED_BASE_CONFIG.read_text())
    return embedded_transformer_config(params.embedded, EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS)


def reference_config(model: ModelParams, component: str) -> dict | None:
    """The model family's published config of a folder component (FLUX.1-dev's, FLUX.2-dev's, SD3.5-large's,
    Qwen-Image's: :mod:`fastflux_core.published`), or None where none is shipped."""
    return REFERENCE_CONFIGS[model.source].get(component)


def folder_config(model: ModelParams, folder: str) -> dict:
    """A model folder component's config (``vae``, ``text_encoder``, …), or — no folder yet, a budget
    made before it exists — the family's published one (:func:`reference_config`)."""
    path = model.path / folder / "config.json" if model.path else None
    if path is not None and path.is_file():
        return json.loads(path.read_text())
    builtin = reference_config(model, folder)
    if builtin is None:
        raise ModelFolderError(f"model folder: missing {path}")
    return dict(builtin)


@dataclass(frozen=True)
class Shapes:
    """Sequence lengths and widths at the configured resolution and text length."""

    n_img: int
    n_txt: int
    dim: int
    in_channels: int  # values per packed latent token (C_tok = 4 · latent_channels)
    text_dim: int
    pooled_dim: int
    latent_channels: int
    scale_factor: int

    @classmethod
    def of(cls, params: Params) -> Shapes:
        t = transformer_config(params)
        fam = layout_of_config(t)
        scale, n_txt = 1, params.text.max_sequence_length  # the embedded base: pixels, MiniLM's tokens
        if params.model.source != "embedded":
            vae = folder_config(params.model, "vae")
            scale = layout(params.model.source).vae_scale_factor(vae)
            n_txt = layout(params.model.source).text_tokens(n_txt)
        h, w = params.sampling.height // scale, params.sampling.width // scale
        return cls(n_img=(h // 2) * (w // 2), n_txt=n_txt,
                   dim=t["num_attention_heads"] * t["attention_head_dim"], in_channels=fam.token_channels(t),
                   text_dim=t["joint_attention_dim"], pooled_dim=t.get("pooled_projection_dim", 0),  # FLUX.2: none
                   latent_channels=fam.latent_channels(t), scale_factor=scale)


def capture_bytes(c: CaptureParams, sampling: SamplingParams, shapes: Shapes, items: dict[str, int]) -> int:
    """Bytes of one capture@k's two stores (uncompressed), for ``items`` images per prompt set (each
    at every captured step, twice with classifier-free guidance)."""
    per_item = len(capture_schedule(c.timesteps, sampling.steps)) * sampling.calls
    return (estimate_bytes(calibration_specs(shapes.dim, c.image_tokens, c.text_tokens, sampling.cfg),
                           items["calibration"] * per_item, c.dtype)
            + estimate_bytes(training_specs(shapes.n_img, shapes.in_channels, sampling.cfg),
                             items["training"] * per_item, c.dtype))
