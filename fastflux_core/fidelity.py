"""Fidelity to the base model, image by image: how close a pruned model's image is to the base
model's image from the same prompt and noise — PSNR, SSIM and LPIPS, as the caching and
distillation papers report them (TeaCache, First-Block Cache, ToCa: "PSNR / SSIM / LPIPS against the
original model").

The paired FID says this of the whole set; these say it of each item, so each gets a bootstrap
interval over items like every other per-image score (:func:`fastflux_core.stats.mean_readings`).
Computed by torchmetrics:

- PSNR (dB, higher is closer) and SSIM (Gaussian window 11, σ 1.5; 1 is identical) on images in
  [0, 1] (``data_range`` 1). They need no weights, so every evaluation has them.
- LPIPS (AlexNet, lower is closer) where ``metrics.lpips_backbone`` names torchvision's AlexNet
  weights: torchmetrics builds LPIPS with a random backbone (nothing downloaded) and its own shipped
  linear layers, then the backbone's tensors are loaded from that file — a ``.safetensors``, or the
  ``.pth`` torchvision publishes read with ``torch.load(weights_only=True)`` (tensors only: no code in a
  pickle runs). AlexNet needs at least 64 pixels a side: smaller images (the embedded default's 8×8
  digits) are upsampled bilinearly to 64 first, both sides alike.

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


def psnr_ssim(images: np.ndarray, base: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) PSNR (dB, capped at :data:`PSNR_CAP`) and (N,) SSIM of each image against its base image."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x, y = to_unit(images).double(), to_unit(base).double()  # float32 loses SSIM's 4th digit to cancellation
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))  # (N,)
    ssim = structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")  # (N,)
    return {"psnr": psnr.clamp(max=PSNR_CAP).double().numpy(), "ssim": ssim.double().numpy()}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise FastFluxError(f"metrics.lpips_backbone: {path} is not a tensors-only checkpoint "
                            f"({type(e).__name__}); convert it to .safetensors") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


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
        self.net.net.load_state_dict(mapped)
        self.net.to(device)
        self.device = device

    @torch.no_grad()
    def per_image(self, images: np.ndarray, base: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(N,) LPIPS of each image against its base image."""
        out = []
        for s in range(0, len(images), batch_size):
            x, y = (to_unit(a[s : s + batch_size]).to(self.device) for a in (images, base))  # (B, 3, H, W)
            if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
                scale = LPIPS_MIN_SIZE / min(x.shape[-2:])
                x, y = (F.interpolate(t, scale_factor=scale, mode="bilinear", align_corners=False) for t in (x, y))
            out.append(self.net(x, y, normalize=True).flatten().double().cpu())  # (B,)
        return torch.cat(out).numpy()


def fidelity_scores(images: np.ndarray, base: np.ndarray, lpips: Lpips | None = None,
                    batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per-image PSNR and SSIM — and LPIPS with ``lpips`` — of ``images`` against ``base`` (the base
    model's images of the same items, in the same order)."""
    if images.shape != base.shape:
        raise FastFluxError(f"fidelity needs the base model's image of every item: got {images.shape} images "
                            f"against {base.shape} of the base")
    out = psnr_ssim(images, base)
    if lpips is not None:
        out["lpips"] = lpips.per_image(images, base, batch_size)
    return out
