"""Image-quality metrics: FID through clean-fid, and a text–image alignment score.

FID: clean-fid computes the features (its folder loader, its resizer, its Fréchet distance). The
feature extractor is a param:
  ``inception`` clean-fid's own TorchScript Inception (``inception-2015-12-05.pt``) read from a local
              folder — never downloaded; "clean" mode, images resized to 299² by clean-fid.
  ``judge``   the digit classifier stage ``base`` trains on the real digits (embedded default), passed
              to clean-fid as its custom feature extractor; images keep their 8×8 size.

Human-preference scores (optional, evaluation set only): HPS v2 / v2.1 and ImageReward, each by
:mod:`fastflux_core.preference` in the user's own environment for it. Fidelity to the base model
image by image (PSNR, SSIM, LPIPS): :mod:`fastflux_core.fidelity`.

Alignment (the paper's "CLIP score" slot):
  ``clip``    CLIP score, 100 · max(cos(image, text), 0), averaged, with a CLIP model from a local folder.
  ``judge``   the judge's mean probability of the prompted digit ("judge alignment"): what CLIP score
              measures — does the image show what the text asks — for a domain CLIP does not know.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from fastflux_core.codec import to_uint8
from fastflux_core.digits import DigitJudge, load_digits
from fastflux_core.errors import FastFluxError
from fastflux_core.preference import PreferenceScorer
from fastflux_core.io import load_tensors, save_png, save_tensors
from fastflux_core.prompts import label_of

if TYPE_CHECKING:
    from fastflux_core.params import MetricsParams

INCEPTION_FILE = "inception-2015-12-05.pt"
# what a quality record may hold (psnr, ssim, lpips: fidelity.py, against the base model's images)
QUALITY_KEYS = ("fid", "fid_real", "clip", "prompt_accuracy", "hps", "imagereward", "psnr", "ssim", "lpips")


@dataclass
class FeatureExtractor:
    """What clean-fid needs: ``model`` maps (B, 3, H, W) floats in [0, 255] to (B, F) features, and
    ``resize`` maps one uint8 (H, W, 3) array to the model's input size (``None``: clean-fid's own)."""

    name: str
    model: Callable[[torch.Tensor], torch.Tensor]
    resize: Callable[[np.ndarray], np.ndarray] | None


def judge_features(judge: torch.nn.Module) -> FeatureExtractor:
    """The digit judge's 128-d penultimate layer as a clean-fid custom feature extractor."""

    def model(x: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) in [0, 255]
        with torch.no_grad():
            return judge.features(x[:, :1] / 127.5 - 1.0)  # (B, 128)

    return FeatureExtractor("judge", model, resize=lambda img: img)


def inception_features(folder: Path, device: torch.device) -> FeatureExtractor:
    """clean-fid's Inception, from ``folder/inception-2015-12-05.pt`` (no download)."""
    from cleanfid.inception_torchscript import InceptionV3W

    path = Path(folder) / INCEPTION_FILE
    if not path.is_file():
        raise FastFluxError(
            f"clean-fid Inception weights not found: {path} (put {INCEPTION_FILE} there, or point "
            f"metrics.inception_path at the folder that holds it)"
        )
    net = InceptionV3W(str(folder), download=False, resize_inside=False).to(device).eval()
    return FeatureExtractor("inception", lambda x: net(x), resize=None)


def folder_features(folder: Path, fx: FeatureExtractor, device: torch.device, batch_size: int) -> np.ndarray:
    """(N, F) features of every image in ``folder`` (sorted by name), through clean-fid."""
    from cleanfid import fid

    return fid.get_folder_features(
        str(folder), model=fx.model, num_workers=0, batch_size=batch_size, device=device, mode="clean",
        custom_fn_resize=fx.resize, verbose=False,
    )


def image_features(images: np.ndarray, fx: FeatureExtractor, device: torch.device, batch_size: int) -> np.ndarray:
    """Features of uint8 images (N, H, W[, 3]): written as PNG to a scratch folder, then read by
    clean-fid exactly as it reads any image folder."""
    with tempfile.TemporaryDirectory(prefix="fastflux-fid-") as tmp:
        for i, img in enumerate(images):
            save_png(Path(tmp) / f"{i:06d}.png", img)
        return folder_features(Path(tmp), fx, device, batch_size)


@dataclass
class FeatureStats:
    """Mean and covariance of features: all FID needs from the reference side."""

    mu: np.ndarray  # (F,)
    sigma: np.ndarray  # (F, F)
    count: int

    @classmethod
    def of(cls, feats: np.ndarray) -> "FeatureStats":
        if len(feats) < 2:
            raise FastFluxError(f"FID needs at least 2 images, got {len(feats)}")
        return cls(np.mean(feats, axis=0), np.cov(feats, rowvar=False), len(feats))

    def save(self, path: Path) -> None:
        save_tensors(path, {"mu": torch.from_numpy(self.mu), "sigma": torch.from_numpy(self.sigma)},
                     metadata={"count": str(self.count)})

    @classmethod
    def load(cls, path: Path) -> "FeatureStats":
        t = load_tensors(path)
        return cls(t["mu"].numpy(), t["sigma"].numpy(), -1)


def fid(feats: np.ndarray, ref: FeatureStats) -> float:
    """Fréchet distance between ``feats`` and reference statistics (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance

    gen = FeatureStats.of(feats)
    return max(0.0, float(frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)))  # no -1e-11 from round-off


class Alignment(Protocol):
    name: str

    def score(self, images: np.ndarray, prompts: list[str]) -> float: ...

    def per_image(self, images: np.ndarray, prompts: list[str]) -> np.ndarray: ...  # (N,) whose mean is score


class JudgeAlignment:
    """Mean judge probability of the prompted digit, in [0, 1]."""

    name = "judge_alignment"

    def __init__(self, judge: torch.nn.Module):
        self.judge = judge

    @torch.no_grad()
    def _probs(self, images: np.ndarray, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)  # (N, 1, 8, 8)
        return self.judge(x).softmax(-1), torch.tensor([label_of(p) for p in prompts])  # (N, 10), (N,)

    def score(self, images: np.ndarray, prompts: list[str]) -> float:
        probs, want = self._probs(images, prompts)
        return probs.gather(1, want[:, None]).mean().item()

    def accuracy(self, images: np.ndarray, prompts: list[str]) -> float:
        """Share of images the judge reads as the prompted digit (its most likely class)."""
        probs, want = self._probs(images, prompts)
        return probs.argmax(1).eq(want).float().mean().item()

    def per_image(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """(N,) the judge's probability of each image's prompted digit."""
        probs, want = self._probs(images, prompts)
        return probs.gather(1, want[:, None])[:, 0].double().numpy()

    def accuracy_per_image(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """(N,) 1.0 where the judge reads the prompted digit, else 0.0."""
        probs, want = self._probs(images, prompts)
        return probs.argmax(1).eq(want).double().numpy()


def item_scores(quality: "Quality", images: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
    """Per-image scores, for intervals over items (:mod:`fastflux_core.stats`): the alignment (key
    ``clip``, as in the stage records), with the judge prompt accuracy (0/1 per image), and each
    configured preference score (``hps``, ``imagereward``: its worker runs once here)."""
    out = {"clip": quality.alignment.per_image(images, prompts)}
    if isinstance(quality.alignment, JudgeAlignment):
        out["prompt_accuracy"] = quality.alignment.accuracy_per_image(images, prompts)
    for scorer in quality.preference:
        out[scorer.name] = np.asarray(scorer.scores(images, prompts), dtype=np.float64)
    return out


def extra_scores(quality: "Quality", images: np.ndarray, prompts: list[str]) -> dict[str, float]:
    """Scores only some configurations have: the judge's prompt accuracy (the preference scores'
    means come from :func:`item_scores`, so each worker runs once)."""
    out = {}
    if isinstance(quality.alignment, JudgeAlignment):
        out["prompt_accuracy"] = quality.alignment.accuracy(images, prompts)
    return out


def _projected(out: "torch.Tensor | object") -> torch.Tensor:
    """CLIP's projected embedding: transformers 5 returns an output object whose pooler_output holds it."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipAlignment:
    """CLIP score (100 · max(cos, 0), averaged) with a CLIP model from a local folder."""

    name = "clip_score"

    def __init__(self, folder: Path, device: torch.device, batch_size: int = 32):
        from transformers import CLIPModel, CLIPProcessor

        if not (Path(folder) / "config.json").is_file():
            raise FastFluxError(f"CLIP model folder not found or incomplete (no config.json): {folder}")
        self.model = CLIPModel.from_pretrained(str(folder), use_safetensors=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(str(folder))
        self.device, self.batch_size = device, batch_size

    def score(self, images: np.ndarray, prompts: list[str]) -> float:
        return float(self.per_image(images, prompts).mean())

    @torch.no_grad()
    def per_image(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """(N,) 100 · max(cos, 0) of each image with its prompt."""
        scores = []
        for s in range(0, len(images), self.batch_size):
            imgs = [np.asarray(i) if i.ndim == 3 else np.repeat(i[..., None], 3, -1) for i in images[s : s + self.batch_size]]
            batch = self.processor(text=prompts[s : s + self.batch_size], images=imgs, return_tensors="pt",
                                   padding="max_length", truncation=True, max_length=77).to(self.device)
            img = _projected(self.model.get_image_features(pixel_values=batch["pixel_values"]))  # (B, P)
            txt = _projected(self.model.get_text_features(input_ids=batch["input_ids"],
                                                          attention_mask=batch.get("attention_mask")))
            cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
            scores.append((100 * cos.clamp(min=0)).double().cpu())
        return torch.cat(scores).numpy()


@dataclass
class Quality:
    """The configured FID feature extractor and alignment score, and the preference scores configured."""

    features: FeatureExtractor
    alignment: Alignment
    preference: tuple[PreferenceScorer, ...] = ()


JUDGE_FILE = Path("data/base/judge.safetensors")


def _load_judge() -> torch.nn.Module:
    if not JUDGE_FILE.is_file():
        raise FastFluxError(
            f"metrics use the digit judge, but {JUDGE_FILE} does not exist (only the embedded base has one; "
            f"for FLUX set metrics.fid_features: inception and metrics.alignment: clip)"
        )
    judge = DigitJudge()
    judge.load_state_dict(load_tensors(JUDGE_FILE))
    return judge.eval()


def preference_scorers(metrics: "MetricsParams") -> tuple[PreferenceScorer, ...]:
    """HPS (``metrics.hps_python``) and ImageReward (``metrics.imagereward_python``) where set, each
    worker tried once on one tiny image: a stage that scores them calls this before it generates
    anything, so an interpreter without the package (or not a Python at all) stops it in seconds, not
    after every image was made. The evaluation set's stages ask for them; importance ablations rank
    by FID and CLIP alone (Eq. 2)."""
    scorers = []
    if metrics.hps_python is not None:
        scorers.append(PreferenceScorer("hps", f"HPS {metrics.hps_version}", metrics.hps_python,
                                        metrics.hps_checkpoint, batch_size=metrics.batch_size))
    if metrics.imagereward_python is not None:
        scorers.append(PreferenceScorer("imagereward", "ImageReward v1.0", metrics.imagereward_python,
                                        metrics.imagereward_checkpoint, metrics.imagereward_config, metrics.batch_size))
    for scorer in scorers:
        scorer.check()
    return tuple(scorers)


def load_quality(m: "MetricsParams", device: torch.device, preference: tuple[PreferenceScorer, ...] = ()) -> Quality:
    """The configured metrics, with the ``preference`` scorers (:func:`preference_scorers`) where given."""
    judge = _load_judge() if "judge" in (m.fid_features, m.alignment) else None
    features = judge_features(judge) if m.fid_features == "judge" else inception_features(m.inception_path, device)
    alignment = JudgeAlignment(judge) if m.alignment == "judge" else ClipAlignment(m.clip_path, device)
    return Quality(features, alignment, preference)


def real_features(real_images: "str | Path | None", fx: FeatureExtractor, device: torch.device,
                  batch_size: int) -> np.ndarray | None:
    """Features of the real images: scikit-learn's digits, a folder of images, or none."""
    if real_images is None:
        return None
    if real_images == "digits":
        images, _ = load_digits()
        return image_features(to_uint8(images), fx, device, batch_size)
    folder = Path(real_images)
    if not folder.is_dir():
        raise FastFluxError(f"metrics.real_images folder not found: {folder}")
    return folder_features(folder, fx, device, batch_size)
