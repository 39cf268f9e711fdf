"""The export's model card: a ``README.md`` in the Hugging Face convention (YAML front matter, then
prose), written from the block map (``pruning.json``) and the evaluate stage's measurements.

It answers what users of pruned FLUX checkpoints ask first: how to load it, which blocks were
removed, what it costs in quality and what it saves in compute — each number with how it was measured.
Every number comes from a file the pipeline wrote; nothing is typed in.

>>> card = model_card({"ratio": 0.1, "n_pruned": 1, "n_blocks": 12, "chain_step": 1, "reuse": True,
...     "replaced_blocks": [{"index": 11, "kind": "single", "name": "s07",
...     "path": "single_transformer_blocks.7", "replacement": "brll"}],
...     "params_base": 100, "params_pruned": 90, "base": {"source": "embedded", "path": "data/base",
...     "config_sha256": "ab"}, "training_data": {}}, {}, {})
>>> "| 11 | single | s07 | `single_transformer_blocks.7` | BRLL linear |" in card
True
"""

from __future__ import annotations

from fastflux_core.export_folder import MODULE

REPLACEMENT = {"brll": "BRLL linear", "brll_temb": "BRLL linear + timestep term (U·silu(temb))", "delete": "removed (identity)"}


def _front_matter(family: str) -> str:
    return "\n".join([
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "license: other  # the base model's license applies",
        f"tags: [fastflux, {family}, pruned, block-pruning, brll, sandwich-training]",
        "---",
    ])


FLUX_FAMILY = {"name": "flux", "pipeline": "FluxPipeline", "transformer": "FluxTransformer2DModel",
               "pruned": "PrunedFluxTransformer2DModel"}  # a block map written before families were recorded


def _loading(numbering: str, pipeline: bool, family: dict) -> str:
    module = MODULE
    whole = ("" if pipeline else "\nThis base is not a diffusers pipeline (no `model_index.json`: e.g. the embedded default "
             "has no VAE or CLIP/T5), so the pipeline lines do not apply: load the transformer and scheduler "
             "folders on their own.\n")
    renumbered = ("" if numbering != "contiguous" else
                  "\nBlocks are numbered contiguously (kept blocks 0, 1, … within each kind; `num_layers` / "
                  "`num_single_layers` count them); the replacing linears are in `transformer/replaced_blocks.safetensors`, "
                  "keyed by original block index, and `block_map.json` maps both numberings.\n")
    return f"""## How to load

```python
# Without FastFLUX: the pruned transformer's class ships in transformer/{module}.py
from diffusers import {family['pipeline']}
pipe = {family['pipeline']}.from_pretrained("<this folder>", trust_remote_code=True)

# The transformer alone
from diffusers import AutoModel
transformer = AutoModel.from_pretrained("<this folder>/transformer", trust_remote_code=True)

# With FastFLUX installed (no remote code runs)
from fastflux_core.export_folder import load_pipeline
pipe = load_pipeline("<this folder>")
```

`{family['transformer']}.from_pretrained` refuses this transformer (an error naming the class above)
instead of re-creating the replaced blocks at random. Kept blocks keep their standard parameter
names; `model_index.json` names the transformer `["{module}", "{family['pruned']}"]`.
{renumbered}{whole}"""


def _removed(block_map: dict) -> str:
    rows = "\n".join(
        f"| {b['index']} | {b['kind']} | {b['name']} | `{b['path']}` | {REPLACEMENT.get(b['replacement'], b['replacement'])} |"
        for b in block_map["replaced_blocks"])
    share = 1 - block_map["params_pruned"] / block_map["params_base"]
    return f"""## What was removed

{block_map['n_pruned']} of {block_map['n_blocks']} blocks (ratio {block_map['ratio']}: n = floor(ratio · N)),
taken from step {block_map['chain_step']} of the progressive chain
({'each component in its latest-trained version, paper §3.2 "inference reuse"' if block_map['reuse'] else 'the state after that step'}).
A BRLL linear keeps the block's shortcut and replaces its residual branch by one linear layer
(y = x + W·x + b; a block with two streams' weights has one per stream), fitted by least squares and repaired by
Sandwich Training; LoRA from that training is merged into the neighbouring blocks' weights.
Parameters: {block_map['params_base']:,} → {block_map['params_pruned']:,} ({share:.1%} fewer).

| index | kind | name | module | replaced by |
|---|---|---|---|---|
{rows}
"""


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _quality(metrics: dict, latency: dict) -> str:
    if not metrics:
        return "## Quality and speed\n\nNot measured (stage `evaluate` has no record).\n"
    n = metrics.get("eval_images")
    clip = metrics.get("clip_kind", "clip")
    rows = [
        ("FID vs the base model's images", "0", _fmt(metrics.get("fid")),
         f"clean-fid, {n} images of held-out evaluation prompts, same seeds for both models"),
        ("FID vs real images", _fmt(metrics.get("base_fid_real")), _fmt(metrics.get("fid_real")), "clean-fid"),
        (f"alignment ({clip})", _fmt(metrics.get("base_clip")), _fmt(metrics.get("clip")),
         "mean over the evaluation images"),
    ]
    if "hps" in metrics:
        hps = f"HPS {metrics.get('hps_version', 'v2')}"
        rows.append((hps, _fmt(metrics.get("base_hps")), _fmt(metrics.get("hps")), f"{hps} checkpoint, mean over the evaluation images"))
    if "imagereward" in metrics:
        rows.append(("ImageReward v1.0", _fmt(metrics.get("base_imagereward")), _fmt(metrics.get("imagereward")),
                     "mean over the evaluation images"))
    if "prompt_accuracy" in metrics:
        rows.append(("prompt accuracy", _fmt(metrics.get("base_prompt_accuracy")), _fmt(metrics.get("prompt_accuracy")),
                     "share of images the digit judge reads as the prompted digit"))
    for key, name, how in (("psnr", "PSNR vs the base's image (dB)", "torchmetrics, each image against the base's from the same noise"),
                           ("ssim", "SSIM vs the base's image", "torchmetrics (Gaussian window 11, σ 1.5), same pairs"),
                           ("lpips", "LPIPS vs the base's image", "torchmetrics' LPIPS (AlexNet), same pairs; lower is closer")):
        if key in metrics:
            ci = (f"; 95 % interval over images [{_fmt(metrics[key + '_ci_low'])}, {_fmt(metrics[key + '_ci_high'])}]"
                  if key + "_ci_low" in metrics else "")
            rows.append((name, "—", _fmt(metrics[key]), how + ci))
    rows.append(("TFLOPs per transformer forward", f"{metrics['flops_base'] / 1e12:.4g}", f"{metrics['flops'] / 1e12:.4g}",
                 f"torch.utils.flop_counter, one forward at the sampling resolution, batch 1 (one sampling step "
                 f"without classifier-free guidance); ratio {metrics['flops_ratio']:.4f}"))
    if latency:
        rows.append(("latency per transformer forward (ms)", f"{latency['latency_ms_base']:.4g} (IQR {latency['latency_iqr_ms_base']:.2g})",
                     f"{latency['latency_ms']:.4g} (IQR {latency['latency_iqr_ms']:.2g})",
                     f"torch.utils.benchmark, median of {latency['repeats']} ABBA-interleaved rounds on the machine "
                     f"that ran `dvc repro`; ratio {latency['latency_ratio']:.3f} (IQR {latency['latency_ratio_iqr']:.2g})"))
    table = "\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    return f"""## Quality and speed

One run of the pipeline (its `seed`); the project's experiments report gives spreads over seeds.

| measure | base | pruned | how |
|---|---|---|---|
{table}
"""


def _provenance(block_map: dict) -> str:
    base = block_map["base"]
    data = block_map.get("training_data", {})
    lines = [f"- {name}: {d['prompts']} prompts × {d['images_per_prompt']} images × {d['timesteps']} timesteps "
             f"= {d['samples']} samples ({d['used_for']})" for name, d in data.items()]
    return f"""## Base model and training data

- base: {base['source']} model at `{base['path']}`; sha256 of its `transformer/config.json`: `{base['config_sha256']}`
{chr(10).join(lines)}
- block map: `block_map.json` (this folder), the same record as the pipeline's `data/assemble/pruning.json`
"""


def model_card(block_map: dict, metrics: dict, latency: dict, pipeline: bool = True) -> str:
    """The README.md text for an export (``metrics``/``latency`` may be empty: not measured);
    ``pipeline``: the folder has a ``model_index.json`` (the base was a diffusers pipeline)."""
    family = block_map.get("family", FLUX_FAMILY)
    title = (f"# {'FLUX' if family['name'] == 'flux' else family['name'].upper()} pruned with FastFLUX: "
             f"{block_map['n_pruned']} of {block_map['n_blocks']} blocks replaced")
    return "\n\n".join([_front_matter(family["name"]), title,
                        "Block-wise pruning by BRLL and Sandwich Training (arXiv 2506.10035), made with FastFLUX.",
                        _loading(block_map.get("numbering", "original"), pipeline, family), _removed(block_map), _quality(metrics, latency), _provenance(block_map)])
