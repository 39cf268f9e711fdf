"""Sizes of a run, known without building a model: the base transformer's config, the sequence
lengths and widths at the configured resolution, and the arrays capture@k writes.

Light on purpose (json, no diffusers): stage ``validate`` sizes the activation stores against free
disk on every ``dvc repro`` from these alone, and the budget (:mod:`fastflux_core.budget`) builds its
fake models from the same configs.

>>> from fastflux_core.store import estimate_bytes
>>> specs = calibration_specs(3072, 64, 16)  # FLUX.1-dev's width, 64 image + 16 text tokens per sample
>>> estimate_bytes(specs, 2048, "bfloat16") / 1e9  # 512 images × 4 timesteps: one calibration store
2.013323264
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fastflux_core import flux_configs
from fastflux_core.params import capture_schedule
from fastflux_core.store import ArraySpec, estimate_bytes

if TYPE_CHECKING:
    from fastflux_core.params import EmbeddedParams, Params

# What the embedded base is trained on (stage base): digits (one grey channel, diffused as pixels) and
# MiniLM's 384-wide token and pooled embeddings.
EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS = 1, (384, 384)


def embedded_transformer_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
    """The FluxTransformer2DModel arguments of the embedded base, for ``latent_channels``-channel
    latents packed 2×2 and text of widths ``text_dims`` (tokens, pooled)."""
    return {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": cfg.num_layers,
            "num_single_layers": cfg.num_single_layers, "attention_head_dim": cfg.attention_head_dim,
            "num_attention_heads": cfg.num_attention_heads, "joint_attention_dim": text_dims[0],
            "pooled_projection_dim": text_dims[1], "guidance_embeds": False, "axes_dims_rope": cfg.axes_dims_rope}


def transformer_config(params: Params) -> dict:
    """The base transformer's config: the FLUX folder's, the embedded base's, or FLUX.1-dev's own."""
    if params.model.source == "flux":
        path = params.model.path / "transformer" / "config.json"
        return json.loads(path.read_text()) if path.is_file() else dict(flux_configs.TRANSFORMER)
    path = Path("data/base/transformer/config.json")
    if path.is_file():
        return json.loads(path.read_text())
    return embedded_transformer_config(params.embedded, EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS)


def component_config(params: Params, folder: str, builtin: dict) -> dict:
    """A FLUX folder component's config (``vae``, ``text_encoder``, …), or FLUX.1-dev's own."""
    path = params.model.path / folder / "config.json" if params.model.path else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else dict(builtin)


@dataclass(frozen=True)
class Shapes:
    """Sequence lengths and widths at the configured resolution and text length."""

    n_img: int
    n_txt: int
    dim: int
    in_channels: int
    text_dim: int
    pooled_dim: int
    latent_channels: int
    scale_factor: int

    @classmethod
    def of(cls, params: Params) -> Shapes:
        t = transformer_config(params)
        scale = 1
        if params.model.source == "flux":
            scale = 2 ** (len(component_config(params, "vae", flux_configs.VAE)["block_out_channels"]) - 1)
        h, w = params.sampling.height // scale, params.sampling.width // scale
        return cls(n_img=(h // 2) * (w // 2), n_txt=params.text.max_sequence_length,
                   dim=t["num_attention_heads"] * t["attention_head_dim"], in_channels=t["in_channels"],
                   text_dim=t["joint_attention_dim"], pooled_dim=t["pooled_projection_dim"],
                   latent_channels=t["in_channels"] // 4, scale_factor=scale)


# ----------------------------------------------------------------------------- what capture@k writes

ITEM_SPECS = [
    ArraySpec("prompt", (), ("sample",), activation=False, dtype="int64"),
    ArraySpec("seed", (), ("sample",), activation=False, dtype="int64"),
    ArraySpec("schedule_step", (), ("sample",), activation=False, dtype="int64"),
    ArraySpec("timestep", (), ("sample",), activation=False),
]


def calibration_specs(dim: int, k_img: int, k_txt: int) -> list[ArraySpec]:
    """calibration.zarr: block input and residual, ``k_img`` image and ``k_txt`` text tokens per sample."""
    return [
        ArraySpec("block_in_img", (dim,), ("token", "dim"), k_img),
        ArraySpec("residual_img", (dim,), ("token", "dim"), k_img),
        ArraySpec("block_in_txt", (dim,), ("text_token", "dim"), k_txt),
        ArraySpec("residual_txt", (dim,), ("text_token", "dim"), k_txt),
    ] + ITEM_SPECS


def training_specs(n_img: int, in_channels: int) -> list[ArraySpec]:
    """training.zarr: the packed noisy latent and guidance the transformer received, per sample."""
    return [ArraySpec("latents", (n_img, in_channels), ("sample", "image_seq", "channel")),
            ArraySpec("guidance", (), ("sample",), activation=False)] + ITEM_SPECS


def capture_bytes(params: Params, shapes: Shapes, items: dict[str, int]) -> int:
    """Bytes of one capture@k's two stores (uncompressed), for ``items`` images per prompt set."""
    c, n_sched = params.capture, len(capture_schedule(params.capture.timesteps, params.sampling.steps))
    return (estimate_bytes(calibration_specs(shapes.dim, c.image_tokens, c.text_tokens), items["calibration"] * n_sched, c.dtype)
            + estimate_bytes(training_specs(shapes.n_img, shapes.in_channels), items["training"] * n_sched, c.dtype))
