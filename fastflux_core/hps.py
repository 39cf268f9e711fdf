"""HPS v2 (Human Preference Score v2, Wu et al. 2023) of generated images — run in the user's own
HPS environment, never in ours.

``hpsv2`` pins its own open_clip fork and versions of torch and timm; installing it beside diffusers
would change the packages FastFLUX runs on. So this file has two halves:

* :class:`HpsScorer` (FastFLUX's side): writes the images as PNGs and their prompts to a temporary
  folder, runs *this file* with ``metrics.hps_python`` — the interpreter of an environment where
  ``pip install hpsv2`` was done — and reads the scores back as JSON.
* :func:`worker` (the HPS environment's side, ``python hps.py --checkpoint C --items I --out O``):
  builds hpsv2's ViT-H-14 as ``hpsv2.img_score`` does, but without its download of the base CLIP
  weights (the HPS checkpoint holds every weight of the model), loads the local checkpoint —
  ``.safetensors``, or a ``.pt`` read by ``torch.load(weights_only=True)``, which takes tensors and
  plain containers only (no code in a pickle runs) — and scores each image as hpsv2 does: the
  diagonal of ``image_features @ text_featuresᵀ`` (the model normalises both).

Only the standard library is imported at the top (FastFLUX's own modules inside the scorer), so the
worker needs nothing of FastFLUX.

Example (the stand-in test, ``tests/test_hps.py``, runs it with a tiny model)::

    metrics:
      hps_python: /opt/hps-env/bin/python        # python -m venv /opt/hps-env && /opt/hps-env/bin/pip install hpsv2
      hps_checkpoint: /models/HPS_v2.1_compressed.pt
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


class HpsScorer:
    """Mean HPS v2 of images and their prompts, computed by the worker in ``python``'s environment."""

    name = "hps"

    def __init__(self, python: Path, checkpoint: Path, batch_size: int = 16):
        self.python, self.checkpoint, self.batch_size = Path(python), Path(checkpoint), batch_size

    def scores(self, images, prompts: list[str]) -> list[float]:
        """One HPS per image ((N, H, W[, 3]) uint8, in prompt order)."""
        from fastflux_core.errors import FastFluxError  # imported here: the worker runs without FastFLUX
        from fastflux_core.io import save_png

        with tempfile.TemporaryDirectory(prefix="fastflux-hps-") as tmp:
            items = []
            for i, (img, prompt) in enumerate(zip(images, prompts, strict=True)):
                save_png(Path(tmp) / f"{i:05d}.png", img)
                items.append({"image": str(Path(tmp) / f"{i:05d}.png"), "prompt": prompt})
            (Path(tmp) / "items.json").write_text(json.dumps(items))
            cmd = [str(self.python), str(WORKER), "--checkpoint", str(self.checkpoint), "--items",
                   str(Path(tmp) / "items.json"), "--out", str(Path(tmp) / "scores.json"),
                   "--batch-size", str(self.batch_size)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise FastFluxError(f"HPS v2 scoring failed in {self.python} (metrics.hps_python): {last}")
            try:
                scores = json.loads((Path(tmp) / "scores.json").read_text())
            except (OSError, ValueError):
                raise FastFluxError(f"{self.python} (metrics.hps_python) exited without error but wrote no scores: "
                                    f"set it to the Python of an environment where `pip install hpsv2` was done") from None
        if not isinstance(scores, list):
            raise FastFluxError(f"HPS v2 worker wrote a JSON {type(scores).__name__}, not a list of scores: "
                                f"{self.python} (metrics.hps_python) must run FastFLUX's worker (python -m fastflux_core.hps)")
        if len(scores) != len(items) or not all(isinstance(s, float) and abs(s) < float("inf") for s in scores):
            raise FastFluxError(f"HPS v2 worker returned {len(scores)} scores for {len(items)} images, or non-finite ones")
        return scores

    def check(self) -> None:
        """Score one grey 64×64 image: an interpreter that is not a Python with hpsv2, or a checkpoint
        the model does not load, fails here with the worker's own last line."""
        import numpy as np

        self.scores(np.full((1, 64, 64, 3), 128, dtype=np.uint8), ["a grey square"])

    def score(self, images, prompts: list[str]) -> float:
        s = self.scores(images, prompts)
        return sum(s) / len(s)


# ----------------------------------------------------------------------------- the HPS environment's side


def _load_checkpoint(path: Path) -> dict:
    """The model's state dict from a local HPS checkpoint, without running code from a pickle."""
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


def worker(argv: list[str] | None = None) -> None:
    """Score ``--items`` (JSON list of {image, prompt}) with the HPS model, write ``--out`` (JSON list)."""
    ap = argparse.ArgumentParser(description="HPS v2 scores (runs in the HPS environment)")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--items", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)

    import torch
    from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer
    from PIL import Image

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # hpsv2.img_score.initialize_model's arguments, with no pretrained tag (nothing is downloaded)
    model, _, preprocess = create_model_and_transforms(
        "ViT-H-14", None, precision="amp", device=device, jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    model.load_state_dict(_load_checkpoint(args.checkpoint))
    model = model.to(device).eval()
    tokenizer = get_tokenizer("ViT-H-14")
    items = json.loads(args.items.read_text())
    scores: list[float] = []
    for s in range(0, len(items), args.batch_size):
        batch = items[s : s + args.batch_size]
        images = torch.stack([preprocess(Image.open(it["image"])) for it in batch]).to(device)  # (B, 3, 224, 224)
        text = tokenizer([it["prompt"] for it in batch]).to(device)  # (B, 77)
        with torch.no_grad(), torch.autocast(device_type=device, enabled=device == "cuda"):
            out = model(images, text)
            logits = out["image_features"] @ out["text_features"].T  # (B, B): image i against prompt j
        scores += [float(x) for x in torch.diagonal(logits).float().cpu()]
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(scores))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != WORKER.parent]  # not our package dir
    worker()
