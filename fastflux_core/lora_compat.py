"""Existing FLUX LoRAs on a pruned export: drop (or renumber) the replaced blocks' keys, say what was lost.

Qwen-Image's LoRAs in the diffusers / peft format map the same way (its blocks are ``transformer_blocks``,
double-stream, with its own MLP and embedder names).

A FLUX LoRA adapts linears inside blocks; a replaced block has none of them left, so its keys have
nothing to attach to and diffusers would warn about every one ("unexpected keys"). This module reads
a LoRA in any of the common key formats, removes the keys of replaced (and deleted) blocks, and —
for an export with contiguous numbering — renumbers the kept blocks' keys. It reports exactly which
keys were dropped and what share of the LoRA's weight they held.

Formats (block keys; non-block keys — embedders, final layer, text encoders — pass through unchanged):

    diffusers / peft   transformer.transformer_blocks.3.attn.to_q.lora_A.weight   (also without "transformer.")
                       transformer.single_transformer_blocks.7.proj_out.lora_B.weight
    kohya (sd-scripts) lora_unet_double_blocks_3_img_attn_qkv.lora_down.weight, ….alpha
                       lora_unet_single_blocks_7_linear1.lora_up.weight
    BFL / ComfyUI      diffusion_model.double_blocks.3.img_attn.qkv.lora_down.weight (or lora_A/lora_B)
                       diffusion_model.single_blocks.7.linear2.lora_up.weight

Weight share: per adapted module the update is ΔW = scale · up @ down (scale = alpha / rank when the
file has an ``alpha``, else 1); the dropped share is Σ‖ΔW‖²_F over dropped modules / Σ over all,
computed from rank × rank Gram matrices (‖UD‖²_F = Σ (UᵀU) ∘ (DDᵀ)), cheap at FLUX size. Tensors
that are not part of a down/up pair (e.g. DoRA magnitudes) count with their own ‖·‖²_F.

>>> import torch
>>> lora = {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.ones(2, 4),
...         "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.ones(4, 2),
...         "lora_unet_double_blocks_1_img_attn_proj.lora_down.weight": torch.ones(2, 4),
...         "lora_unet_double_blocks_1_img_attn_proj.lora_up.weight": torch.ones(4, 2)}
>>> out, report = convert(lora, n_double=2, n_single=1, removed={1}, numbering="original")
>>> sorted(out), report["format"], report["dropped_share"]
(['lora_unet_double_blocks_0_img_attn_proj.lora_down.weight', 'lora_unet_double_blocks_0_img_attn_proj.lora_up.weight'], 'kohya', 0.5)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from fastflux_core.errors import FastFluxError
from fastflux_core.pruned_flux import kept_blocks

# format → (block-key pattern: prefix, kind word, index, separator; the kind words for double/single)
BLOCK_PATTERNS = {
    "diffusers": (re.compile(r"^((?:transformer\.)?)(transformer_blocks|single_transformer_blocks)\.(\d+)(\..+)$"),
                  ("transformer_blocks", "single_transformer_blocks")),
    "kohya": (re.compile(r"^(lora_unet_)(double_blocks|single_blocks)_(\d+)(_.+)$"), ("double_blocks", "single_blocks")),
    "bfl": (re.compile(r"^((?:model\.)?diffusion_model\.|)(double_blocks|single_blocks)\.(\d+)(\..+)$"),
            ("double_blocks", "single_blocks")),
}
# keys outside the blocks that each format may also carry (kept as they are)
OTHER_KEYS = {
    "diffusers": re.compile(r"^(?:transformer\.)?(x_embedder|context_embedder|time_text_embed|norm_out|proj_out|"
                            r"img_in|txt_in|txt_norm)\.|"  # the last three: Qwen-Image's embedders
                            r"^text_encoder(_2)?\."),
    "kohya": re.compile(r"^lora_unet_(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)|^lora_te\d?_"),
    "bfl": re.compile(r"^(?:(?:model\.)?diffusion_model\.)?(img_in|txt_in|time_in|vector_in|guidance_in|final_layer)\.|"
                      r"^text_encoders\."),
}
OTHER_FAMILY = re.compile(r"(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block|joint_blocks|"
                          r"lora_unet_down|lora_unet_up|lora_unet_mid|lora_unet_input|lora_unet_output)")
# adapted linears whose input is the model's hidden width D, in every format (a width check tells
# another family — SD3's diffusers keys look like FLUX's double blocks — or another variant apart)
READS_HIDDEN = re.compile(r"(to_q|to_k|to_v|add_[qkv]_proj|to_out\.0|to_add_out|attn[._]qkv|attn[._]proj|linear1|proj_mlp|"
                          r"mlp[._]0|ff\.net\.0\.proj|ff_context\.net\.0\.proj|(?:img|txt)_mlp\.net\.0\.proj)$")
PAIR = re.compile(r"^(.*)\.(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)\.weight$")
DOWN, UP = ("lora_A", "lora_down", "lora.down"), ("lora_B", "lora_up", "lora.up")


class LoraFormatError(FastFluxError):
    """A LoRA file this tool cannot map onto a pruned FLUX export."""


def detect_format(keys: list[str]) -> str:
    """The one format whose block or non-block patterns match every key; else a clear error."""
    if not keys:
        raise LoraFormatError("the LoRA file holds no tensors")
    for name, (blocks, _) in BLOCK_PATTERNS.items():
        if any(blocks.match(k) for k in keys) and all(blocks.match(k) or OTHER_KEYS[name].match(k) for k in keys):
            return name
    foreign = next((k for k in keys if OTHER_FAMILY.search(k)), None)
    if foreign:
        raise LoraFormatError(f"a LoRA for another model family (UNet or SD3 key {foreign!r}): "
                              "only FLUX LoRAs can be mapped onto a pruned FLUX model")
    unknown = next(k for k in keys if not any(b.match(k) or OTHER_KEYS[n].match(k) for n, (b, _) in BLOCK_PATTERNS.items()))
    raise LoraFormatError(f"LoRA keys match no known FLUX format (diffusers/peft, kohya, BFL/ComfyUI), e.g. {unknown!r}")


def _delta_sq_norms(lora: dict[str, torch.Tensor]) -> dict[str, float]:
    """Key → its share of Σ‖ΔW‖²: a pair's ‖scale · up @ down‖² is given to its down key (0 to the
    up and alpha keys); an unpaired tensor's own ‖·‖²."""
    out = {k: 0.0 for k in lora}
    modules: dict[str, dict[str, str]] = {}
    for k in lora:
        m = PAIR.match(k)
        if m:
            modules.setdefault(m.group(1), {})["down" if m.group(2) in DOWN else "up"] = k
    paired = set()
    for module, parts in modules.items():
        if set(parts) != {"down", "up"}:
            continue
        down, up = lora[parts["down"]].double().flatten(1), lora[parts["up"]].double().flatten(1)  # (r, in), (out, r)
        alpha = lora.get(module + ".alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        out[parts["down"]] = scale**2 * float(((up.T @ up) * (down @ down.T)).sum())
        paired |= {parts["down"], parts["up"], module + ".alpha"}
    for k, v in lora.items():
        if k not in paired:
            out[k] = float(v.double().pow(2).sum())
    return out


def check_width(lora: dict[str, torch.Tensor], width: int) -> None:
    """Every down matrix of a linear that reads the hidden state must take ``width`` inputs."""
    for key, value in lora.items():
        m = PAIR.match(key)
        if m and m.group(2) in DOWN and READS_HIDDEN.search(m.group(1)) and value.shape[-1] != width:
            raise LoraFormatError(f"LoRA key {key!r} reads width {value.shape[-1]}, the model's hidden width is {width}: "
                                  "a LoRA for another model family or FLUX variant")


def convert(lora: dict[str, torch.Tensor], n_double: int, n_single: int, removed: set[int],
            numbering: str, width: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The LoRA for a pruned model whose blocks ``removed`` (global indices) are gone; with
    ``numbering="contiguous"`` kept blocks get their contiguous indices; ``width``: the model's hidden
    width, checked when given. Returns (tensors, report)."""
    fmt = detect_format(list(lora))
    if width is not None:
        check_width(lora, width)
    pattern, kinds = BLOCK_PATTERNS[fmt]
    double, single = kept_blocks(n_double, n_single, removed)
    norms = _delta_sq_norms(lora)
    out, dropped, dropped_blocks = {}, [], set()
    for key, value in lora.items():
        m = pattern.match(key)
        if not m:
            out[key] = value
            continue
        prefix, kind, index, rest = m.group(1), m.group(2), int(m.group(3)), m.group(4)
        is_double = kind == kinds[0]
        if index >= (n_double if is_double else n_single):
            raise LoraFormatError(f"LoRA key {key!r} is for {'double' if is_double else 'single'} block {index}; the "
                                  f"model has {n_double if is_double else n_single}: a LoRA for another FLUX variant")
        renumber = double if is_double else single
        if index not in renumber:
            dropped.append(key)
            dropped_blocks.add(index if is_double else n_double + index)
            continue
        new_index = renumber[index] if numbering == "contiguous" else index
        out[f"{prefix}{kind}{'.' if fmt != 'kohya' else '_'}{new_index}{rest}"] = value
    total = sum(norms.values())
    return out, {
        "format": fmt, "numbering": numbering, "keys_in": len(lora), "keys_out": len(out),
        "dropped_blocks": sorted(dropped_blocks), "dropped_keys": sorted(dropped),
        "dropped_share": sum(norms[k] for k in dropped) / total if total > 0 else 0.0,
        "renumbered": numbering == "contiguous",
    }


def convert_file(lora_path: Path, export: Path, out_path: Path, numbering: str | None = None) -> dict:
    """Read ``lora_path`` (safetensors only: never unpickled), map it onto the export folder (a pipeline
    folder with ``transformer/``, or the transformer folder itself), write ``out_path`` atomically.
    ``numbering`` defaults to the export's. Nothing is written on any error."""
    import json

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    from fastflux_core.io import atomic_file

    config_path = next((p for p in (export / "transformer" / "config.json", export / "config.json") if p.is_file()), None)
    if config_path is None:
        raise FastFluxError(f"{export} is not a FastFLUX export: no transformer/config.json with its block map")
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastFluxError(f"{config_path} is not valid JSON ({err}): the export is damaged; re-run its stages "
                            f"(dvc repro export)") from None
    if not isinstance(config, dict) or "replaced_blocks" not in config:
        raise FastFluxError(f"{config_path} has no block map (replaced_blocks): not a FastFLUX export")
    if lora_path.suffix != ".safetensors":
        raise FastFluxError(f"{lora_path}: only .safetensors LoRAs are read (a pickle could run code)")
    try:
        with safe_open(str(lora_path), "pt") as f:
            lora = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise FastFluxError(f"{lora_path}: not a readable safetensors file ({str(err)[:200]})") from None
    bad = [k for k, t in lora.items() if t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise FastFluxError(f"{lora_path}: {len(bad)} of {len(lora)} tensors hold NaN or inf (first: {bad[0]}): the "
                            f"LoRA is damaged; nothing was written")
    if config.get("numbering") == "contiguous":  # SD3 has one block kind: no single blocks
        n_double, n_single = config["original_num_layers"], config.get("original_num_single_layers", 0)
    else:
        n_double, n_single = config["num_layers"], config.get("num_single_layers", 0)
    removed = set(config["replaced_blocks"]) | set(config.get("deleted_blocks", []))
    width = config["num_attention_heads"] * config["attention_head_dim"]
    tensors, report = convert(lora, n_double, n_single, removed, numbering or config.get("numbering", "original"), width)
    with atomic_file(out_path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={**metadata, "fastflux_dropped_blocks": json.dumps(report["dropped_blocks"])})
    return report
