"""Fidelity to the base model, image by image: how close a pruned model's image is to the base
model's image from the same prompt and noise — PSNR, SSIM and LPIPS, as the caching and
distillation papers report them (TeaCache, First-Block Cache, ToCa: "PSNR / SSIM / LPIPS against the
original model").

The paired FID says this of the whole set; these say it of each item, so each gets a bootstrap
interval over items like every other per-image score (:func:`fastflux_core.stats.mean_readings`).
Computed by torchmetrics, ``batch_size`` images at a time (a 1024² image is 25 MB in float64):

- PSNR (dB, higher is closer) and SSIM (Gaussian window 11, σ 1.5; 1 is identical) on images in
  [0, 1] (``data_range`` 1), in float64. They need no weights, so every evaluation has them.
  torchmetrics' SSIM averages its map over the whole (reflect-padded) image, without the border crop
  of some reference implementations: compare SSIM across models measured here, not with a paper's
  third decimal.
- LPIPS (AlexNet, lower is closer) where ``metrics.lpips_backbone`` names torchvision's AlexNet
  weights: torchmetrics builds LPIPS with a random backbone (nothing downloaded) and its own shipped
  linear layers, then the backbone's tensors are loaded from that file — a ``.safetensors``, or the
  ``.pth`` torchvision publishes read with ``torch.load(weights_only=True)`` (tensors only: no code in a
  pickle runs). AlexNet needs at least 64 pixels a side: smaller images (the embedded default's 8×8
  digits) are upsampled bilinearly first, both images alike, their shorter side to 64.

Grey images are compared as three equal channels (PSNR and SSIM read the same as on one).

>>> import numpy as np
>>> a = np.zeros((2, 16, 16), dtype=np.uint8); b = a.copy(); b[1] += 10
>>> s = fidelity_scores(a, b)
>>> bool(s["psnr"][1] < s["psnr"][0]), round(float(s["ssim"][0]), 4)  # item 0 identical, item 1 not
(True, 1.0)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastflux_core.errors import FastFluxError

PSNR_CAP = 100.0  # dB for an image identical to its base (PSNR is infinite there): a finite record
LPIPS_MIN_SIZE = 64


def to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, 3) uint8 → (N, 3, H, W) float32 in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    return x[:, None].expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def psnr_ssim(images: np.ndarray, base: np.ndarray, batch_size: int = 32) -> dict[str, np.ndarray]:
    """(N,) PSNR (dB, capped at :data:`PSNR_CAP`) and (N,) SSIM of each image against its base image."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    psnr, ssim = [], []
    for s in range(0, len(images), batch_size):
        # float64: float32 loses SSIM's 4th digit to cancellation
        x, y = (to_unit(a[s : s + batch_size]).double() for a in (images, base))  # (B, 3, H, W)
        psnr.append(peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3)))  # (B,)
        ssim.append(structural_similarity_index_measure(x, y, data_range=1.0, reduction="none"))  # (B,)
    return {"psnr": torch.cat(psnr).clamp(max=PSNR_CAP).numpy(), "ssim": torch.cat(ssim).numpy()}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat name → tensor dict from ``path``, or one error naming the file and what it must be."""
    wrong = (f"metrics.lpips_backbone: {path} is not torchvision's AlexNet weights as tensors (a state dict "
             f"saved by torch.save or as .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:  # weights_only: tensors and plain containers only, no code in a pickle runs
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise FastFluxError(f"{wrong}: {type(e).__name__}; convert it to .safetensors") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FastFluxError(f"{wrong}: it holds a {type(state).__name__}")
    return state


class Lpips:
    """LPIPS (AlexNet) with the backbone from ``backbone`` (torchvision's ``alexnet`` state dict: the
    ``features.<i>.weight/bias`` tensors are the ones LPIPS uses; the classifier is ignored)."""

    def __init__(self, backbone: Path, device: torch.device):
        from torchmetrics.functional.image.lpips import _NoTrainLpips

        self.net = _NoTrainLpips(net="alex", pnet_rand=True)  # random backbone: nothing downloaded
        state = _tensors(Path(backbone))
        # torchmetrics splits torchvision's ``features`` into slices, each child keeping its index
        mapped, want = {}, set()
        for name, _ in self.net.net.named_parameters():  # "slice2.3.weight" ← "features.3.weight"
            want.add(name)
            src = "features." + name.split(".", 1)[1]
            if src in state:
                mapped[name] = state[src]
        missing = sorted(want - set(mapped))
        if missing:
            raise FastFluxError(f"metrics.lpips_backbone: {backbone} is not torchvision's AlexNet weights "
                                f"(no features.{missing[0].split('.', 1)[1]})")
        shapes = dict(self.net.net.named_parameters())
        for name, t in mapped.items():
            if t.shape != shapes[name].shape:
                raise FastFluxError(f"metrics.lpips_backbone: {backbone} is not torchvision's AlexNet weights "
                                    f"(features.{name.split('.', 1)[1]} is {tuple(t.shape)}, AlexNet's is "
                                    f"{tuple(shapes[name].shape)})")
        self.net.net.load_state_dict(mapped)
        self.net.to(device)
        self.device = device

    @torch.no_grad()
    def per_image(self, images: np.ndarray, base: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N,) LPIPS of each image against its base image."""
        out = []
        for s in range(0, len(images), batch_size):
            x, y = (to_unit(a[s : s + batch_size]).to(self.device) for a in (images, base))  # (B, 3, H, W)
            h, w = x.shape[-2:]
            if min(h, w) < LPIPS_MIN_SIZE:
                size = (round(h * LPIPS_MIN_SIZE / min(h, w)), round(w * LPIPS_MIN_SIZE / min(h, w)))
                x, y = (F.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (x, y))
            out.append(self.net(x, y, normalize=True).flatten().double().cpu())  # (B,)
        return torch.cat(out).numpy()


def fidelity_scores(images: np.ndarray, base: np.ndarray, lpips: Lpips | None = None,
                    batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-image PSNR and SSIM — and LPIPS with ``lpips`` — of ``images`` against ``base`` (the base
    model's images of the same items, in the same order)."""
    if images.shape != base.shape:
        raise FastFluxError(f"fidelity needs the base model's image of every item: got {images.shape} images "
                            f"against {base.shape} of the base")
    out = psnr_ssim(images, base, batch_size)
    if lpips is not None:
        out["lpips"] = lpips.per_image(images, base, batch_size)
    return out
