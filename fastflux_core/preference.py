"""Human-preference scores of generated images — HPS v2 / v2.1 (Wu et al. 2023) and ImageReward v1.0
(Xu et al. 2023) — each run in the user's own environment for it, never in ours.

``hpsv2`` pins its own open_clip fork and versions of torch and timm; ``image-reward`` pins old
transformers and timm, and the two disagree with each other too. Installing either beside diffusers
would change the packages FastFLUX runs on. So this file has two halves:

* :class:`PreferenceScorer` (FastFLUX's side): writes the images as PNGs and their prompts to a
  temporary folder, runs *this file* with the configured interpreter — ``metrics.hps_python``, the
  Python of an environment where ``pip install hpsv2`` was done, or ``metrics.imagereward_python``,
  one with ``pip install image-reward`` — and reads one score per image back as JSON.
* :func:`worker` (the scorer's environment's side, ``python preference.py --kind hps|imagereward
  --checkpoint C [--config J] --items I --out O``) builds the model as its package does, but
  without the package's downloads, and loads the local checkpoint — ``.safetensors``, or a ``.pt``
  read by ``torch.load(weights_only=True)``, which takes tensors and plain containers only (no code
  in a pickle runs):

  - ``hps``: hpsv2's ViT-H-14 as ``hpsv2.img_score`` builds it, with no pretrained tag (the HPS
    checkpoint holds every weight); each image scored as hpsv2 does — the diagonal of
    ``image_features @ text_featuresᵀ`` (the model normalises both). v2.0 and v2.1 share the
    architecture; ``metrics.hps_version`` names which checkpoint it is, in records and model cards.
  - ``imagereward``: ``ImageReward.ImageReward.ImageReward(med_config)`` as ``ImageReward.load``
    builds it, ``med_config.json`` from ``metrics.imagereward_config`` (the file beside
    ``ImageReward.pt`` on the hub) instead of a download; every weight of the model must be in the
    checkpoint. Each image scored with the model's own ``score(prompt, image)``. Its BLIP text side
    loads the ``bert-base-uncased`` tokenizer by name: it must be in that environment's Hugging Face
    cache (this process runs it with the hub offline, as every FastFLUX process).

Only the standard library is imported at the top (FastFLUX's own modules inside the scorer), so the
worker needs nothing of FastFLUX.

Example (the stand-in tests, ``tests/test_preference.py``, run both with tiny models)::

    metrics:
      hps_python: /opt/hps-env/bin/python        # python -m venv /opt/hps-env && /opt/hps-env/bin/pip install hpsv2
      hps_checkpoint: /models/HPS_v2.1_compressed.pt
      hps_version: v2.1
      imagereward_python: /opt/ir-env/bin/python  # ... /opt/ir-env/bin/pip install image-reward
      imagereward_checkpoint: /models/ImageReward/ImageReward.pt
      imagereward_config: /models/ImageReward/med_config.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = Path(__file__).resolve()
PACKAGES = {"hps": "hpsv2", "imagereward": "image-reward"}  # what the kind's environment has installed


class PreferenceScorer:
    """Per-image scores of one preference model (``kind``: ``hps`` | ``imagereward``, the record key),
    computed by the worker in ``python``'s environment. ``label`` names it with its version."""

    def __init__(self, kind: str, label: str, python: Path, checkpoint: Path, config: Path | None = None,
                 batch_size: int = 16):
        self.name, self.label = kind, label
        self.python, self.checkpoint, self.config, self.batch_size = Path(python), Path(checkpoint), config, batch_size

    def scores(self, images, prompts: list[str]) -> list[float]:
        """One score per image ((N, H, W[, 3]) uint8, in prompt order)."""
        from fastflux_core.errors import FastFluxError  # imported here: the worker runs without FastFLUX
        from fastflux_core.io import save_png

        where = f"{self.python} (metrics.{self.name}_python)"
        with tempfile.TemporaryDirectory(prefix=f"fastflux-{self.name}-") as tmp:
            items = []
            for i, (img, prompt) in enumerate(zip(images, prompts, strict=True)):
                save_png(Path(tmp) / f"{i:05d}.png", img)
                items.append({"image": str(Path(tmp) / f"{i:05d}.png"), "prompt": prompt})
            (Path(tmp) / "items.json").write_text(json.dumps(items))
            cmd = [str(self.python), str(WORKER), "--kind", self.name, "--checkpoint", str(self.checkpoint),
                   "--items", str(Path(tmp) / "items.json"), "--out", str(Path(tmp) / "scores.json"),
                   "--batch-size", str(self.batch_size)] + (["--config", str(self.config)] if self.config else [])
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise FastFluxError(f"{self.label} scoring failed in {where}: {last}")
            try:
                scores = json.loads((Path(tmp) / "scores.json").read_text())
            except (OSError, ValueError):
                raise FastFluxError(f"{where} exited without error but wrote no scores: set it to the Python of an "
                                 f"environment where `pip install {PACKAGES[self.name]}` was done") from None
        if not isinstance(scores, list):
            raise FastFluxError(f"{self.label} worker wrote a JSON {type(scores).__name__}, not a list of scores: "
                             f"{where} must run FastFLUX's worker (python -m fastflux_core.preference)")
        if len(scores) != len(items) or not all(isinstance(s, float) and abs(s) < float("inf") for s in scores):
            raise FastFluxError(f"{self.label} worker returned {len(scores)} scores for {len(items)} images, or non-finite ones")
        return scores

    def check(self) -> None:
        """Score one grey 64×64 image: an interpreter that is not a Python with the package, or a
        checkpoint the model does not load, fails here with the worker's own last line."""
        import numpy as np

        self.scores(np.full((1, 64, 64, 3), 128, dtype=np.uint8), ["a grey square"])

    def score(self, images, prompts: list[str]) -> float:
        s = self.scores(images, prompts)
        return sum(s) / len(s)


# ----------------------------------------------------------------------------- the scorer's environment's side


def _load_checkpoint(path: Path) -> dict:
    """The model's state dict from a local checkpoint, without running code from a pickle."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise SystemExit(f"{path}: not a tensors-only checkpoint ({type(e).__name__}); convert it to "
                         f".safetensors: {str(e).splitlines()[0] if str(e) else ''}") from None
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt


def _hps(args, device: str):
    """hpsv2's ViT-H-14 with the checkpoint's weights → scores of a batch of items."""
    import torch
    from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer
    from PIL import Image

    # hpsv2.img_score.initialize_model's arguments, with no pretrained tag (nothing is downloaded)
    model, _, preprocess = create_model_and_transforms(
        "ViT-H-14", None, precision="amp", device=device, jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    model.load_state_dict(_load_checkpoint(args.checkpoint))
    model = model.to(device).eval()
    tokenizer = get_tokenizer("ViT-H-14")

    def score(batch: list[dict]) -> list[float]:
        images = torch.stack([preprocess(Image.open(it["image"])) for it in batch]).to(device)  # (B, 3, 224, 224)
        text = tokenizer([it["prompt"] for it in batch]).to(device)  # (B, 77)
        with torch.no_grad(), torch.autocast(device_type=device, enabled=device == "cuda"):
            out = model(images, text)
            logits = out["image_features"] @ out["text_features"].T  # (B, B): image i against prompt j
        return [float(x) for x in torch.diagonal(logits).float().cpu()]

    return score


def _imagereward(args, device: str):
    """ImageReward v1.0 with the checkpoint's weights → scores of a batch of items."""
    import torch
    from ImageReward.ImageReward import ImageReward

    if args.config is None or not args.config.is_file():
        raise SystemExit(f"ImageReward needs its med_config.json (metrics.imagereward_config): {args.config} not found")
    model = ImageReward(med_config=str(args.config), device=device)
    missing = model.load_state_dict(_load_checkpoint(args.checkpoint), strict=False).missing_keys
    if missing:  # strict=False as ImageReward.load, for the checkpoint's extra keys; none of ours may be missing
        raise SystemExit(f"{args.checkpoint}: not an ImageReward checkpoint ({len(missing)} of the model's "
                         f"tensors missing, e.g. {missing[0]})")
    model = model.to(device).eval()

    def score(batch: list[dict]) -> list[float]:
        with torch.no_grad():
            return [float(model.score(it["prompt"], it["image"])) for it in batch]

    return score


def worker(argv: list[str] | None = None) -> None:
    """Score ``--items`` (JSON list of {image, prompt}) with the ``--kind`` model, write ``--out`` (JSON list)."""
    ap = argparse.ArgumentParser(description="preference scores (run in the scorer's own environment)")
    ap.add_argument("--kind", choices=sorted(PACKAGES), required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--config", type=Path)
    ap.add_argument("--items", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    score = (_hps if args.kind == "hps" else _imagereward)(args, device)
    items = json.loads(args.items.read_text())
    scores: list[float] = []
    for s in range(0, len(items), args.batch_size):
        scores += score(items[s : s + args.batch_size])
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(scores))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != WORKER.parent]  # not our package dir
    worker()
