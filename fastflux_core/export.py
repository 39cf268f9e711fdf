"""The exported pruned model: the transformer folder, and a pipeline folder that diffusers loads whole.

The transformer is a :class:`~fastflux_core.pruned_flux.PrunedFluxTransformer2DModel` (a
``FluxTransformer2DModel`` whose config lists ``replaced_blocks``); LoRA from Sandwich Training is
merged into the weights first, so inference needs neither peft nor FastFLUX's chain. Its class ships
inside the folder (``pruned_flux.py``, named in ``auto_map``), and the plain class refuses it.

The pipeline folder (stage ``export``) is the base's pipeline with the transformer swapped:
``model_index.json`` names the pruned class, ``transformer/`` links to the assembled transformer
and every other component (scheduler, VAE, text encoders, tokenizers) links to the base folder's —
nothing of FLUX.1-dev's 24 GB is copied. Three ways to load it:

    from diffusers import DiffusionPipeline, FluxPipeline
    pipe = FluxPipeline.from_pretrained("data/export", trust_remote_code=True)     # no FastFLUX needed
    pipe = DiffusionPipeline.from_pretrained("data/export", trust_remote_code=True)
    from fastflux_core.export import load_pipeline
    pipe = load_pipeline("data/export")                                              # our class, no remote code

(The class exists because the replacement keeps the shortcut, y = x + W·x + b, which no stock
diffusers block computes; ReplaceMe-style folding into a neighbour is impossible here.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from accelerate import init_empty_weights
from diffusers import FluxTransformer2DModel

from fastflux_core.errors import ModelFolderError
from fastflux_core.pruned_flux import MODULE_FILE, PrunedFluxTransformer2DModel, kept_blocks

__all__ = ["PrunedFluxTransformer2DModel", "merge_lora", "to_pruned", "write_pipeline", "load_pipeline"]

TRANSFORMER_ENTRY = [MODULE_FILE.removesuffix(".py"), PrunedFluxTransformer2DModel.__name__]


def merge_lora(model: FluxTransformer2DModel) -> None:
    """Fold every LoRA adapter into its base weights and remove peft's layers (in place)."""
    if getattr(model, "peft_config", None):
        model.fuse_lora()
        model.unload_lora()


def to_pruned(model: FluxTransformer2DModel, replaced: list[int], deleted: list[int] = ()
              ) -> PrunedFluxTransformer2DModel:
    """The in-memory chain model (linears swapped in, LoRA merged) as a savable pruned model.
    Weights are moved, not copied (``assign=True`` into an empty-weight skeleton)."""
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    config["replaced_blocks"] = sorted(replaced)
    config["deleted_blocks"] = sorted(deleted)
    config["weights_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    with init_empty_weights():
        pruned = PrunedFluxTransformer2DModel.from_config(config)
    pruned.load_state_dict(model.state_dict(), strict=True, assign=True)
    return pruned.eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def write_pipeline(transformer: Path, base_root: Path, out: Path, final: Path | None = None,
                   numbering: str = "original") -> list[str]:
    """Make ``out`` a pipeline folder: ``transformer/`` links to ``transformer`` (relative, so the
    project can move), every other component of ``base_root`` links to it (absolute). With a base
    that is a diffusers pipeline folder (``model_index.json``), ``model_index.json`` is the base's
    with the transformer entry naming the pruned class; a base without one (the embedded default:
    transformer and scheduler only, no VAE or CLIP/T5) gets the links but no index, and loads
    component by component. ``final``: where ``out`` is renamed to afterwards (an atomic write),
    which the relative link is made for. ``numbering="contiguous"``: ``transformer/`` is instead a
    rewritten copy with the kept blocks renumbered (:func:`~fastflux_core.pruned_flux.save_contiguous`).
    Returns the component names."""
    if numbering == "contiguous":
        PrunedFluxTransformer2DModel.from_pretrained(str(transformer)).save_pretrained(out / "transformer",
                                                                                      numbering="contiguous")
    else:
        os.symlink(os.path.relpath(transformer.absolute(), (final or out).absolute()), out / "transformer")
    index_path = base_root / "model_index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if "transformer" not in index:
            raise ModelFolderError(f"{index_path} lists no transformer: not a FLUX pipeline folder")
        components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
        index["transformer"] = TRANSFORMER_ENTRY
        (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    else:
        components = sorted(p.name for p in base_root.iterdir() if p.is_dir() and any(p.glob("*.json")))
    linked = []
    for name in components:
        if name == "transformer":
            continue
        if not (base_root / name).is_dir():
            raise ModelFolderError(f"base folder {base_root} lacks {name}/, which its model_index.json lists")
        os.symlink((base_root / name).resolve(), out / name)
        linked.append(name)
    return ["transformer", *linked]


def contiguous_map(transformer: Path) -> dict[str, dict[str, int]]:
    """Original → contiguous index within each kind for the kept blocks of a saved pruned transformer
    (what ``numbering: contiguous`` does to the keys)."""
    config = PrunedFluxTransformer2DModel.load_config(str(transformer))
    removed = set(config["replaced_blocks"]) | set(config["deleted_blocks"])
    double, single = kept_blocks(config["num_layers"], config["num_single_layers"], removed)
    return {"double": {str(i): k for i, k in double.items()}, "single": {str(j): k for j, k in single.items()}}


def load_pipeline(folder: str | Path, **kwargs):
    """The exported pipeline with FastFLUX's class for the transformer (no remote code run)."""
    import sys

    from diffusers import DiffusionPipeline

    from fastflux_core import pruned_flux

    # model_index.json names the library "pruned_flux" (the file beside the transformer); diffusers
    # checks a passed component against that library, which it takes from sys.modules.
    sys.modules.setdefault(TRANSFORMER_ENTRY[0], pruned_flux)
    transformer = PrunedFluxTransformer2DModel.from_pretrained(str(Path(folder) / "transformer"))
    return DiffusionPipeline.from_pretrained(str(folder), transformer=transformer, **kwargs)
