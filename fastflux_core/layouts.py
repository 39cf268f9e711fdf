"""What a transformer config says without building the model — or importing diffusers: each family's
block layout (execution index, kind, module path), the channels of its latent tokens, the text tokens
of its own encoders, the class names its folders and exports carry, and the embedded base's config.

Stages that need no more than these — ``validate`` sizing the run, ``rank`` and ``plan`` naming the
blocks (:func:`model_blocks`) — read them from config.json in a fraction of a second instead of importing diffusers (~4 s a
process). The block adapters (:mod:`fastflux_core.flux`, :mod:`~fastflux_core.flux2`,
:mod:`~fastflux_core.sd3`) subclass these classes, so each fact is written once;
tests/test_layouts.py checks every layout against a model built from the same config.

>>> cfg = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 1, "in_channels": 64}
>>> [b.name for b in layout_of_config(cfg).block_refs(cfg)], layout_of_config(cfg).latent_channels(cfg)
(['d00', 'd01', 's00'], 16)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fastflux_core.blocks import BlockRef
from fastflux_core.errors import ModelFolderError, loading

if TYPE_CHECKING:
    from fastflux_core.params import EmbeddedParams, ModelParams


class FluxLayout:
    """FLUX.1 (``FluxTransformer2DModel``): ``num_layers`` double-stream blocks, then
    ``num_single_layers`` single-stream ones; latents packed 2×2 into tokens before the model."""

    family = "flux"
    model_class_name = "FluxTransformer2DModel"
    pipeline_class = "FluxPipeline"
    cfg_renorm = False  # classifier-free guidance as the pipeline combines it: v_u + s·(v_c − v_u), nothing more
    pruned_class = "PrunedFluxTransformer2DModel"
    # diffusers' defaults for keys a config.json may leave out (tests/test_layouts.py reads them off __init__)
    defaults = {"num_layers": 19, "num_single_layers": 38, "in_channels": 64}

    @classmethod
    def block_refs(cls, config: dict) -> list[BlockRef]:
        """Every block in execution order: ``d00``… then ``s00``…"""
        get = lambda key: config.get(key, cls.defaults[key])  # noqa: E731
        n_double, n_single = get("num_layers"), get("num_single_layers")
        return [BlockRef(i, "double", f"transformer_blocks.{i}") for i in range(n_double)] + [
            BlockRef(n_double + j, "single", f"single_transformer_blocks.{j}") for j in range(n_single)]

    @classmethod
    def token_channels(cls, config: dict) -> int:
        """Values per packed latent token (C_tok = 4C): the model reads tokens as they are."""
        return config.get("in_channels", cls.defaults["in_channels"])

    @classmethod
    def latent_channels(cls, config: dict) -> int:
        return cls.token_channels(config) // 4

    @staticmethod
    def text_tokens(max_sequence_length: int) -> int:
        """Text tokens per prompt of the folder's own encoders: T5's, ``max_sequence_length``."""
        return max_sequence_length

    @staticmethod
    def vae_scale_factor(vae_config: dict) -> int:
        """Image pixels per side of one latent cell: ``AutoencoderKL``'s (and FLUX.2's) 2^(levels − 1)."""
        return 2 ** (len(vae_config.get("block_out_channels", [0] * 4)) - 1)

    @staticmethod
    def embedded_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
        """The ``FluxTransformer2DModel`` arguments of the embedded base (``embedded.flux``)."""
        return {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": cfg.flux.num_layers,
                "num_single_layers": cfg.flux.num_single_layers, "attention_head_dim": cfg.attention_head_dim,
                "num_attention_heads": cfg.num_attention_heads, "joint_attention_dim": text_dims[0],
                "pooled_projection_dim": text_dims[1], "guidance_embeds": False,
                "axes_dims_rope": cfg.flux.axes_dims_rope}


class Flux2Layout(FluxLayout):
    """FLUX.2 (``Flux2Transformer2DModel``: dev, klein): FLUX.1's block layout and token packing."""

    family = "flux2"
    model_class_name = "Flux2Transformer2DModel"
    pipeline_class = "Flux2Pipeline"  # or Flux2KleinPipeline: the folder's model_index.json says which
    pruned_class = "PrunedFlux2Transformer2DModel"
    defaults = {"num_layers": 8, "num_single_layers": 48, "in_channels": 128}

    @staticmethod
    def embedded_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
        """The ``Flux2Transformer2DModel`` arguments of the embedded base (``embedded.flux2``); no pooled
        text vector, no guidance embedding."""
        return {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": cfg.flux2.num_layers,
                "num_single_layers": cfg.flux2.num_single_layers, "attention_head_dim": cfg.attention_head_dim,
                "num_attention_heads": cfg.num_attention_heads, "joint_attention_dim": text_dims[0],
                "axes_dims_rope": cfg.flux2.axes_dims_rope, "guidance_embeds": False}


CLIP_TOKENS = 77  # SD3's prompt embedding: CLIP-L/G's 77 tokens, then T5's max_sequence_length


class SD3Layout:
    """SD3 / SD3.5 (``SD3Transformer2DModel``): ``num_layers`` joint blocks, the last of which
    (``final``) returns no text stream; 2×2 latent patches are the model's own tokens."""

    family = "sd3"
    model_class_name = "SD3Transformer2DModel"
    pipeline_class = "StableDiffusion3Pipeline"
    cfg_renorm = False  # classifier-free guidance as the pipeline combines it: v_u + s·(v_c − v_u), nothing more
    pruned_class = "PrunedSD3Transformer2DModel"
    defaults = {"num_layers": 18, "in_channels": 16, "patch_size": 2}

    @classmethod
    def block_refs(cls, config: dict) -> list[BlockRef]:
        """Every block in execution order; a model whose patch is not a packed 2×2 token is refused."""
        patch = config.get("patch_size", cls.defaults["patch_size"])
        if patch != 2:
            raise ValueError(f"SD3 adapter needs patch_size 2 (a patch is a packed 2×2 token), got {patch}")
        n = config.get("num_layers", cls.defaults["num_layers"])
        return [BlockRef(i, "final" if i == n - 1 else "joint", f"transformer_blocks.{i}") for i in range(n)]

    @classmethod
    def token_channels(cls, config: dict) -> int:
        return 4 * cls.latent_channels(config)

    @classmethod
    def latent_channels(cls, config: dict) -> int:
        return config.get("in_channels", cls.defaults["in_channels"])

    @staticmethod
    def text_tokens(max_sequence_length: int) -> int:
        """Text tokens per prompt of the folder's own encoders: CLIP's 77, then T5's."""
        return CLIP_TOKENS + max_sequence_length

    vae_scale_factor = FluxLayout.vae_scale_factor  # the same AutoencoderKL

    @staticmethod
    def embedded_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
        """The ``SD3Transformer2DModel`` arguments of the embedded base (``embedded.sd3``); the digits
        are 8×8 latent cells (``sample_size``)."""
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        return {"sample_size": 8, "patch_size": 2, "in_channels": latent_channels, "out_channels": latent_channels,
                "num_layers": cfg.sd3.num_layers, "attention_head_dim": cfg.attention_head_dim,
                "num_attention_heads": cfg.num_attention_heads, "joint_attention_dim": text_dims[0],
                "caption_projection_dim": dim, "pooled_projection_dim": text_dims[1],
                "pos_embed_max_size": cfg.sd3.pos_embed_max_size,
                "dual_attention_layers": list(cfg.sd3.dual_attention_layers), "qk_norm": cfg.sd3.qk_norm}


class QwenImageLayout:
    """Qwen-Image (``QwenImageTransformer2DModel``): ``num_layers`` double-stream blocks (60), each with
    its own modulation, as FLUX.1's double blocks; latents packed 2×2 into tokens before the model, in
    FLUX.1's channel order. Variants whose forward differs — Qwen-Image-Edit-2511's ``zero_cond_t``
    (a second, zero-timestep modulation for reference-image tokens), the layered model's
    ``use_additional_t_cond``, a guidance embedding — are refused by name."""

    family = "qwenimage"
    model_class_name = "QwenImageTransformer2DModel"
    pipeline_class = "QwenImagePipeline"
    pruned_class = "PrunedQwenImageTransformer2DModel"
    defaults = {"num_layers": 60, "in_channels": 64, "patch_size": 2}
    refused = ("zero_cond_t", "use_additional_t_cond", "guidance_embeds")  # switches FastFLUX cannot run yet
    cfg_renorm = True  # QwenImagePipeline rescales the guided velocity to the conditional one's norm per token

    @classmethod
    def block_refs(cls, config: dict) -> list[BlockRef]:
        """Every block in execution order: ``d00``…; a switched-on variant of :attr:`refused` is refused."""
        on = [k for k in cls.refused if config.get(k)]
        if on:
            raise ValueError(f"Qwen-Image adapter: {', '.join(on)} set in the transformer's config (an editing or "
                             f"layered variant whose forward differs) is not supported")
        n = config.get("num_layers", cls.defaults["num_layers"])
        return [BlockRef(i, "double", f"transformer_blocks.{i}") for i in range(n)]

    @classmethod
    def token_channels(cls, config: dict) -> int:
        """Values per packed latent token (C_tok = 4C): the model's ``img_in`` reads tokens as they are."""
        return config.get("in_channels", cls.defaults["in_channels"])

    @classmethod
    def latent_channels(cls, config: dict) -> int:
        return cls.token_channels(config) // 4

    @staticmethod
    def text_tokens(max_sequence_length: int) -> int:
        """Text tokens per prompt: Qwen2.5-VL's hidden states after the chat template's system turn,
        zero-padded to ``max_sequence_length``."""
        return max_sequence_length

    @staticmethod
    def vae_scale_factor(vae_config: dict) -> int:
        """Image pixels per side of one latent cell: ``AutoencoderKLQwenImage`` halves the image once per
        entry of ``temperal_downsample`` (``QwenImagePipeline``'s ``vae_scale_factor``; Qwen-Image: 8)."""
        return 2 ** len(vae_config.get("temperal_downsample", [False, True, True]))

    @staticmethod
    def embedded_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
        """The ``QwenImageTransformer2DModel`` arguments of the embedded base (``embedded.qwenimage``);
        the pooled text width is unused (Qwen-Image reads no pooled vector)."""
        return {"patch_size": 2, "in_channels": 4 * latent_channels, "out_channels": latent_channels,
                "num_layers": cfg.qwenimage.num_layers, "attention_head_dim": cfg.attention_head_dim,
                "num_attention_heads": cfg.num_attention_heads, "joint_attention_dim": text_dims[0],
                "axes_dims_rope": cfg.qwenimage.axes_dims_rope}


LAYOUTS: dict[str, type] = {c.family: c for c in (FluxLayout, Flux2Layout, SD3Layout, QwenImageLayout)}


def layout(name: str) -> type:
    """A family's layout by name (``model.source`` / ``embedded.family``)."""
    if name in LAYOUTS:
        return LAYOUTS[name]
    raise ValueError(f"unknown model family {name!r} (known: {', '.join(LAYOUTS)})")


def layout_of_config(config: dict) -> type:
    """The layout for a transformer config (its ``_class_name``, pruned exports included)."""
    name = str(config.get("_class_name", ""))
    for cls in LAYOUTS.values():
        if name in (cls.model_class_name, cls.pruned_class):
            return cls
    raise ValueError(f"no block adapter for a transformer of class {name!r}")


# What the embedded base is trained on (stage base): digits (one grey channel, diffused as pixels) and
# MiniLM's 384-wide token and pooled embeddings.
EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS = 1, (384, 384)


def embedded_transformer_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
    """The transformer arguments of the embedded base (its family's, ``embedded.family``), for
    ``latent_channels``-channel latents and text of widths ``text_dims`` (tokens, pooled); with the
    class name, as diffusers writes it into config.json."""
    cls = layout(cfg.family)
    return {"_class_name": cls.model_class_name, **cls.embedded_config(cfg, latent_channels, text_dims)}


EMBEDDED_BASE = Path("data/base")  # the embedded default's pipeline folder, as stage base writes it
EMBEDDED_BASE_CONFIG = EMBEDDED_BASE / "transformer" / "config.json"


def embedded_base() -> Path:
    """The embedded base's folder, or one line saying which stage makes it."""
    if not EMBEDDED_BASE_CONFIG.is_file():
        raise ModelFolderError(f"embedded base model not found in {EMBEDDED_BASE}: run stage 'base' first (dvc repro base)")
    return EMBEDDED_BASE


def model_blocks(model: ModelParams) -> list[BlockRef]:
    """The base model's blocks, in execution order, from its config.json — the folder's, or the one
    stage base wrote for the embedded default — without diffusers or weights."""
    root = embedded_base() if model.source == "embedded" else model.path
    path = root / "transformer" / "config.json"
    with loading(path.parent):  # unreadable: the folder is damaged (and which stage re-makes it)
        config = json.loads(path.read_text())
    return config_blocks(config, str(path))


def config_blocks(config: dict, where: str) -> list[BlockRef]:
    """The blocks a transformer config names, in execution order; a config no layout takes (an unknown
    class, SD3 with another patch size, a Qwen-Image variant) is one line naming ``where`` it came from."""
    try:
        return layout_of_config(config).block_refs(config)
    except ValueError as err:
        raise ModelFolderError(f"{where}: {err}") from None
