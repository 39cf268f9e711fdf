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


# FLUX.1-dev's published component configs (``config.json`` of each sub-folder of
# black-forest-labs/FLUX.1-dev), for what needs the shapes without the 33 GB of weights: the budget
# command (:mod:`fastflux_core.budget`) when no FLUX folder is at hand, and the FLUX-width test folder
# (``scripts/make_flux_width_folder.py``). Nothing here is downloaded; a real folder's own configs
# always win when ``model.path`` exists.
FLUX1_DEV_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

FLUX1_DEV_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

FLUX1_DEV_CLIP_TEXT = {  # text_encoder: CLIP ViT-L/14 text tower
    "architectures": ["CLIPTextModel"],
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}

FLUX1_DEV_T5_ENCODER = {  # text_encoder_2: T5 v1.1 XXL encoder
    "architectures": ["T5EncoderModel"],
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
}

FLUX1_DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# FLUX.2-dev's transformer (black-forest-labs/FLUX.2-dev, transformer/config.json): the defaults of
# diffusers' Flux2Transformer2DModel, which are that model's. For the budget of a run whose folder is
# not there yet; a real folder's own config always wins.
FLUX2_DEV_TRANSFORMER = {
    "_class_name": "Flux2Transformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [32, 32, 32, 32],
    "eps": 1e-06,
    "guidance_embeds": True,
    "in_channels": 128,
    "joint_attention_dim": 15360,
    "mlp_ratio": 3.0,
    "num_attention_heads": 48,
    "num_layers": 8,
    "num_single_layers": 48,
    "patch_size": 1,
    "rope_theta": 2000,
    "timestep_guidance_channels": 256,
}

# Qwen-Image's transformer (Qwen/Qwen-Image, transformer/config.json): the defaults of diffusers'
# QwenImageTransformer2DModel, which are that model's. For the budget of a run whose folder is not
# there yet; a real folder's own config always wins.
QWEN_IMAGE_TRANSFORMER = {
    "_class_name": "QwenImageTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": False,
    "in_channels": 64,
    "joint_attention_dim": 3584,
    "num_attention_heads": 24,
    "num_layers": 60,
    "out_channels": 16,
    "patch_size": 2,
}


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
    # FLUX.1-dev's published component configs: the budget of a run whose folder is not there yet
    reference_configs = {"transformer": FLUX1_DEV_TRANSFORMER, "vae": FLUX1_DEV_VAE,
                         "scheduler": FLUX1_DEV_SCHEDULER, "text_encoder": FLUX1_DEV_CLIP_TEXT,
                         "text_encoder_2": FLUX1_DEV_T5_ENCODER}

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
    reference_configs = {"transformer": FLUX2_DEV_TRANSFORMER}

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
    reference_configs: dict = {}  # none shipped: an SD3 budget reads the folder's configs

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
    reference_configs = {"transformer": QWEN_IMAGE_TRANSFORMER}
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
