"""Fidelity to the base image by image (fastflux_core/fidelity.py): PSNR and SSIM against their
formulas, LPIPS against a computation by hand from torchvision's AlexNet and torchmetrics' shipped
linear layers — which shows the backbone file's tensors land where LPIPS reads them."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from tiny import Payload

from fastflux_core.errors import FastFluxError
from fastflux_core.fidelity import PSNR_CAP, Lpips, fidelity_scores, psnr_ssim


def _pair(n=3, size=16, rgb=True, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, size, size, 3) if rgb else (n, size, size)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_is_its_formula_per_image_and_capped_where_identical():
    a, b = _pair()
    b[1] = a[1]
    got = psnr_ssim(a, b)["psnr"]
    mse = ((a / 255.0 - b / 255.0) ** 2).reshape(len(a), -1).mean(1)
    assert got[0] == pytest.approx(10 * np.log10(1 / mse[0]), abs=1e-4) and got[1] == PSNR_CAP
    assert got[2] == pytest.approx(10 * np.log10(1 / mse[2]), abs=1e-4) and got[0] != pytest.approx(got[2], abs=1e-3)


def test_ssim_reads_images_in_0_1_and_keeps_item_order():
    """Flat images of levels a and b: SSIM's luminance term alone, (2ab + C1) / (a² + b² + C1) with
    C1 = (0.01 · 1)² — which holds only if the images reach it in [0, 1] (data range 1)."""
    levels = [(128, 153), (40, 200), (90, 90)]
    x = np.stack([np.full((16, 16), p, np.uint8) for p, _ in levels])
    y = np.stack([np.full((16, 16), q, np.uint8) for _, q in levels])
    got = psnr_ssim(x, y)["ssim"]
    for g, (p, q) in zip(got, levels):
        a, b = p / 255, q / 255
        assert g == pytest.approx((2 * a * b + 1e-4) / (a * a + b * b + 1e-4), abs=1e-5)
    grey, _ = _pair(rgb=False)  # one channel reads as three equal ones
    assert psnr_ssim(grey, grey[::-1])["ssim"] == pytest.approx(psnr_ssim(np.stack([grey] * 3, -1), np.stack([grey[::-1]] * 3, -1))["ssim"])


def _lpips_by_hand(alexnet: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS (Zhang et al. 2018) of (N, 3, H, W) images in [0, 1]: AlexNet's five ReLU outputs,
    unit-normalised over channels, squared differences weighted by the shipped linear layers,
    averaged over space and summed over layers."""
    import torchmetrics.functional.image.lpips as tm

    lins = torch.load(Path(inspect.getfile(tm)).parent / "lpips_models" / "alex.pth", map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    fx, fy = ((2 * t - 1 - shift) / scale for t in (x, y))
    total = torch.zeros(len(x))
    taps = {1: 0, 4: 1, 7: 2, 9: 3, 11: 4}  # ReLU after conv1..conv5
    for i, layer in enumerate(alexnet.features[:12]):
        fx, fy = layer(fx), layer(fy)
        if i in taps:
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            w = lins[f"lin{taps[i]}.model.1.weight"]  # (1, C, 1, 1)
            total += ((nx - ny) ** 2 * w).sum(1).mean((1, 2))
    return total


@pytest.fixture(scope="module")
def alexnet() -> torch.nn.Module:
    """torchvision's AlexNet, random weights standing in for ImageNet's (built once: 61 M parameters)."""
    return torchvision.models.alexnet(weights=None).eval()


def test_lpips_loads_the_backbone_file_and_equals_the_computation_by_hand(alexnet, tmp_path):
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in alexnet.state_dict().items()}, str(tmp_path / "alexnet.safetensors"))
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    a, b = _pair(n=2, size=64)
    with torch.no_grad():
        want = _lpips_by_hand(alexnet, *(torch.from_numpy(t).float().permute(0, 3, 1, 2) / 255 for t in (a, b)))
    for name in ("alexnet.safetensors", "alexnet.pth"):
        got = Lpips(tmp_path / name, torch.device("cpu")).per_image(a, b, batch_size=1)
        assert got == pytest.approx(want.double().numpy(), rel=1e-4) and got.min() > 0
    lp = Lpips(tmp_path / "alexnet.safetensors", torch.device("cpu"))
    digits = np.random.default_rng(1).integers(0, 256, (3, 8, 8), dtype=np.uint8)  # the embedded default's size
    s = fidelity_scores(digits, digits[[0, 2, 1]], lp)
    assert s["lpips"][0] == 0 and (s["lpips"][1:] > 0).all() and set(s) == {"psnr", "ssim", "lpips"}


def test_a_backbone_that_is_not_alexnet_is_refused(alexnet, tmp_path):
    state = dict(alexnet.state_dict())
    del state["features.8.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(FastFluxError, match=r"not torchvision's AlexNet weights \(no features.8.weight\)"):
        Lpips(tmp_path / "partial.safetensors", torch.device("cpu"))
    marker = tmp_path / "code-ran"
    torch.save({"features.0.weight": Payload(marker)}, tmp_path / "evil.pth")  # a valid torch file holding code
    with pytest.raises(FastFluxError, match="not torchvision's AlexNet weights as tensors.*UnpicklingError"):
        Lpips(tmp_path / "evil.pth", torch.device("cpu"))
    assert not marker.exists()
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    full = alexnet.state_dict()
    save_file({k: v[..., :1].contiguous() if v.ndim == 4 else v for k, v in full.items()},  # 1×1 kernels
              str(tmp_path / "narrow.safetensors"))
    for name, cause in (("broken.safetensors", "SafetensorError"), ("list.pth", "it holds a list"),
                        ("narrow.safetensors", "features.0.weight is .* AlexNet's is")):
        with pytest.raises(FastFluxError, match=f"metrics.lpips_backbone: .*{name}.*{cause}"):
            Lpips(tmp_path / name, torch.device("cpu"))
    with pytest.raises(FastFluxError, match="the base model's image of every item"):
        fidelity_scores(np.zeros((2, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8))
