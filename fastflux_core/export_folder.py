"""The export folder (stage ``export``): the base's pipeline with the pruned transformer swapped in.

``model_index.json`` names the pruned class, ``transformer/`` links to the assembled transformer and
every other component (scheduler, VAE, text encoders, tokenizers) links to the base folder's —
nothing of FLUX.1-dev's 24 GB is copied. Three ways to load it:

    from diffusers import DiffusionPipeline, FluxPipeline          # SD3: StableDiffusion3Pipeline
    pipe = FluxPipeline.from_pretrained("./data/export", trust_remote_code=True)     # no FastFLUX needed
    pipe = DiffusionPipeline.from_pretrained("./data/export", trust_remote_code=True)
    from fastflux_core.export_folder import load_pipeline
    pipe = load_pipeline("./data/export")                                              # our class, no remote code

This module imports diffusers only where a function needs the model class, so the stage that writes
the folder (links, index, card) starts in seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastflux_core.errors import ModelFolderError

# model_index.json's entry for the transformer: the module shipped in transformer/ and its class
# (fastflux_core/pruned_flux.py's MODULE_FILE and the class the config names; tests/test_export_loading.py checks both)
MODULE = "pruned_flux"


def transformer_entry(transformer: Path) -> list[str]:
    """``[module, class]`` of a saved pruned transformer (``PrunedFluxTransformer2DModel``, ``PrunedSD3…``)."""
    return [MODULE, json.loads((transformer / "config.json").read_text())["_class_name"]]


def write_pipeline(transformer: Path, base_root: Path, out: Path, final: Path | None = None,
                   numbering: str = "original") -> list[str]:
    """Make ``out`` a pipeline folder: ``transformer/`` links to ``transformer`` (relative, so the
    project can move), every other component of ``base_root`` links to it (:func:`link_target`:
    relative inside the project, absolute to a model folder outside it). With a base
    that is a diffusers pipeline folder (``model_index.json``), ``model_index.json`` is the base's
    with the transformer entry naming the pruned class; a base without one (the embedded default:
    transformer and scheduler only, no VAE or CLIP/T5) gets the links but no index, and loads
    component by component. ``final``: where ``out`` is renamed to afterwards (an atomic write),
    which the relative link is made for. ``numbering="contiguous"``: ``transformer/`` is instead a
    rewritten copy with the kept blocks renumbered (:func:`~fastflux_core.pruned_flux.save_contiguous`).
    Returns the component names."""
    if numbering == "contiguous":
        from fastflux_core import pruned_flux

        cls = getattr(pruned_flux, transformer_entry(transformer)[1])
        cls.from_pretrained(str(transformer)).save_pretrained(out / "transformer", numbering="contiguous")
    else:
        os.symlink(os.path.relpath(transformer.absolute(), (final or out).absolute()), out / "transformer")
    index_path = base_root / "model_index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if "transformer" not in index:
            raise ModelFolderError(f"{index_path} lists no transformer: not a FLUX or SD3 pipeline folder")
        components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
        index["transformer"] = transformer_entry(transformer)
        (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    else:
        components = sorted(p.name for p in base_root.iterdir() if p.is_dir() and any(p.glob("*.json")))
    linked = []
    for name in components:
        if name == "transformer":
            continue
        if not (base_root / name).is_dir():
            raise ModelFolderError(f"base folder {base_root} lacks {name}/, which its model_index.json lists")
        os.symlink(link_target(base_root / name, final or out), out / name)
        linked.append(name)
    return ["transformer", *linked]


def link_target(target: Path, folder: Path) -> str:
    """What a link in ``folder`` to ``target`` holds: a relative path when ``target`` is inside the
    project (the embedded base under data/: the project can be moved, copied to another machine or
    restored from DVC elsewhere and the export still loads), an absolute one when it is outside (a
    model folder such as /models/FLUX.1-dev stays where it is when the project moves).

    >>> link_target(Path("data/base/scheduler"), Path("data/export")), link_target(Path("/models/F/vae"), Path("x"))
    ('../base/scheduler', '/models/F/vae')
    """
    target_abs, project = target.absolute(), Path.cwd()
    if target_abs.is_relative_to(project):
        return os.path.relpath(target_abs, folder.absolute())
    return str(target.resolve())


def contiguous_map(transformer: Path) -> dict[str, dict[str, int]]:
    """Original → contiguous index within each kind for the kept blocks of a saved pruned transformer
    (what ``numbering: contiguous`` does to the keys)."""
    from fastflux_core.pruned_flux import kept_blocks

    config = json.loads((transformer / "config.json").read_text())
    removed = set(config["replaced_blocks"]) | set(config["deleted_blocks"])
    if "num_single_layers" not in config:  # SD3: one list of blocks
        return {"blocks": {str(i): k for i, k in kept_blocks(config["num_layers"], 0, removed)[0].items()}}
    double, single = kept_blocks(config["num_layers"], config["num_single_layers"], removed)
    return {"double": {str(i): k for i, k in double.items()}, "single": {str(j): k for j, k in single.items()}}


def load_pipeline(folder: str | Path, **kwargs):
    """The exported pipeline with FastFLUX's class for the transformer (no remote code run)."""
    import sys

    from diffusers import DiffusionPipeline

    from fastflux_core import pruned_flux

    # model_index.json names the library "pruned_flux" (the file beside the transformer); diffusers
    # checks a passed component against that library, which it takes from sys.modules.
    sys.modules.setdefault(MODULE, pruned_flux)
    folder = Path(folder)
    if not (folder / "transformer" / "config.json").is_file():
        raise ModelFolderError(f"{folder} is not an exported pipeline: {folder / 'transformer' / 'config.json'} is "
                               f"missing (stage export writes it: dvc repro export)")
    for link in (p for p in folder.iterdir() if p.is_symlink() and not p.exists()):
        raise ModelFolderError(f"{link} links to {os.readlink(link)}, which does not exist: the folder it points "
                               f"into moved; put it back or re-run stage export (dvc repro export)")
    module, name = transformer_entry(Path(folder) / "transformer")
    # the transformer is passed in whole, so the pipeline's dtype= would not reach it
    dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
    transformer = getattr(pruned_flux, name).from_pretrained(str(folder / "transformer"), dtype=dtype)
    return DiffusionPipeline.from_pretrained(str(folder), transformer=transformer, **kwargs)
