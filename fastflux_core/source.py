"""Where the base model comes from: the embedded default or a local FLUX.1-dev / SD3 folder.

This is the only place that looks at ``model.source`` to load a model (:func:`fastflux_core.layouts.model_blocks`
reads the same folder's config, for stages that need no model). Everything downstream receives the same
objects either way — a transformer (whose family :func:`~fastflux_core.families.adapter_for` finds),
a ``FlowMatchEulerDiscreteScheduler`` and a latent codec (the text encoder: :func:`fastflux_core.text.load_text_encoder`) — and runs the same code.
Which transformer class a folder holds is read from its config (``_class_name``), so the embedded
base of either family and a FLUX or SD3 folder load through the same lines.

Embedded default: stage ``base`` writes ``data/base/`` in the same sub-folder layout as a diffusers
pipeline folder (``transformer/``, ``scheduler/``), so both are loaded by ``from_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from fastflux_core.codec import LatentCodec, PixelCodec
from fastflux_core.errors import ModelFolderError, loading
from fastflux_core.families import adapter_for, family, family_of_config
from fastflux_core.layouts import EMBEDDED_BASE, embedded_base, model_blocks  # noqa: F401 (EMBEDDED_BASE: stage base)
from fastflux_core.params import ModelParams, Params
from fastflux_core.placement import choose, place, resolve_device
from fastflux_core.preflight import check_model_folder

def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def model_root(cfg: ModelParams) -> Path:
    """Folder holding ``transformer/`` and ``scheduler/`` for the configured source."""
    if cfg.source != "embedded":
        assert cfg.path is not None
        check_model_folder(cfg.path, cfg.source)
        return cfg.path
    return embedded_base()


def transformer_class(root: Path) -> type:
    """The diffusers class of ``root/transformer`` (FLUX or SD3), from its config."""
    with loading(root / "transformer"):  # unreadable: the folder is damaged (and which stage re-makes it)
        config = json.loads((root / "transformer" / "config.json").read_text())
    try:
        return family_of_config(config).model_class
    except ValueError as err:
        raise ModelFolderError(f"{root / 'transformer' / 'config.json'}: {err}") from None


def load_transformer(cfg: ModelParams, root: Path | None = None) -> torch.nn.Module:
    """The base transformer in eval mode and the model dtype, on the host: a stage places what it
    runs on the device (:func:`on_device`, :mod:`fastflux_core.placement`)."""
    root = model_root(cfg) if root is None else root
    with loading(root / "transformer"):
        model = transformer_class(root).from_pretrained(
            str(root), subfolder="transformer", dtype=resolve_dtype(cfg.dtype), use_safetensors=True
        )
    return model.eval()


def on_device(model: torch.nn.Module, params: Params, stage: str) -> torch.nn.Module:
    """Place a host model for ``stage`` on the configured device: resident or block-offloaded, as
    :func:`fastflux_core.placement.choose` decides from ``model.offload`` and ``model.gpu_memory_gb``."""
    device = resolve_device(params.model.device)
    return place(model, device, choose(stage, params, device))


def load_scheduler(cfg: ModelParams, root: Path | None = None) -> FlowMatchEulerDiscreteScheduler:
    root = model_root(cfg) if root is None else root
    with loading(root / "scheduler"):
        return FlowMatchEulerDiscreteScheduler.from_pretrained(str(root), subfolder="scheduler")


def load_codec(cfg: ModelParams, transformer: torch.nn.Module) -> LatentCodec:
    """The latent codec: the folder's VAE, or the identity on pixels for the embedded default."""
    if cfg.source != "embedded":
        assert cfg.path is not None
        fam = family(cfg.source)  # its VAE class (FLUX.1, SD3: AutoencoderKL) and how it reads latents
        with loading(cfg.path / "vae"):
            vae = fam.vae_class.from_pretrained(
                str(cfg.path), subfolder="vae", dtype=resolve_dtype(cfg.dtype), use_safetensors=True
            )
        return fam.codec(vae.to(resolve_device(cfg.device)).eval())
    return PixelCodec(adapter_for(transformer).latent_channels(transformer.config))


def describe_folder_base(cfg: ModelParams) -> dict:
    """Stage ``base`` for a model folder (``model.source: flux | sd3``): nothing to train; check the
    folder and record what the pipeline will prune (its path and blocks per kind)."""
    assert cfg.path is not None
    check_model_folder(cfg.path, cfg.source)
    blocks = model_blocks(cfg)
    return {
        "source": cfg.source,
        "path": str(cfg.path.resolve()),
        "blocks": len(blocks),
        **{f"{kind}_blocks": sum(b.kind == kind for b in blocks) for kind in dict.fromkeys(b.kind for b in blocks)},
    }


def empty_base_model(cfg: ModelParams) -> torch.nn.Module:
    """The base transformer built from its config on the meta device: structure without weights."""
    from accelerate import init_empty_weights

    root = model_root(cfg)
    cls = transformer_class(root)
    with loading(root / "transformer"):
        config = cls.load_config(str(root), subfolder="transformer")
    with init_empty_weights():
        return cls.from_config(config)


def load_base_blocks(cfg: ModelParams, indices: list[int]) -> list[torch.nn.Module]:
    """Blocks ``indices`` of the base transformer with their weights, and nothing else of the model:
    read tensor by tensor from the folder's safetensors files (sharded or not), so the unpruned
    blocks of a sandwich (``sandwich.target: original``) cost their own size in host memory, not the
    model's. On the configured device and dtype, in eval mode, frozen."""
    from safetensors import safe_open

    root = model_root(cfg)
    adapter = adapter_for(empty_base_model(cfg))
    prefixes = {adapter.blocks[i].path + ".": i for i in indices}
    wanted: dict[int, dict[str, torch.Tensor]] = {i: {} for i in indices}
    files = sorted((root / "transformer").glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"no safetensors weights in {root / 'transformer'}")
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    blocks = []
    with loading(root / "transformer"):
        for f in files:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    prefix = next((p for p in prefixes if key.startswith(p)), None)
                    if prefix is not None:
                        wanted[prefixes[prefix]][key[len(prefix):]] = sf.get_tensor(key)
        for i in indices:
            block = adapter.block(i).to_empty(device="cpu")
            block.load_state_dict(wanted[i], strict=True)  # a missing tensor: the folder is damaged
            blocks.append(block.to(device, dtype).eval().requires_grad_(False))
    return blocks
