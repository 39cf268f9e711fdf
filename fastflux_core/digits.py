"""The embedded default's data: scikit-learn's handwritten digits, their captions, and a judge.

1,797 real 8×8 greyscale digits (values 0..16) ship inside scikit-learn, so the default pipeline
needs no download. Images are scaled to [-1, 1] and used directly as a 1-channel "latent".

The judge is a small MLP classifier trained on the real digits. It tells whether a generated image
shows the digit its prompt asked for (``prompt accuracy``); its penultimate layer is the feature
space later used for FID on the default.
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn
from tqdm.auto import trange

from fastflux_core.prompts import NAMES, label_of

# Captions used to train the embedded base; the prompt files under data/prompts/digits use these
# and other phrasings.
TRAIN_TEMPLATES = (
    "a handwritten digit {name}",
    "the number {name}",
    "a handwritten {digit}",
    "the digit {digit}",
    "a picture of the number {name}",
    "{name}",
    "a scanned digit {name}",
    "an image of handwritten {name}",  # 8 MiniLM tokens: text.max_sequence_length keeps the digit
)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits: images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2.0 - 1.0).unsqueeze(1)
    return images, torch.from_numpy(d.target.astype(np.int64))


def split(n: int, seed: int, test_share: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed train/test index split."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_share))
    return perm[n_test:], perm[:n_test]


def captions() -> tuple[list[str], torch.Tensor]:
    """Every training caption and its class: (prompts, labels (len,))."""
    prompts, labels = [], []
    for label, name in enumerate(NAMES):
        for t in TRAIN_TEMPLATES:
            prompts.append(t.format(name=name, digit=label))
            labels.append(label)
    return prompts, torch.tensor(labels)


class DigitJudge(nn.Module):
    """MLP on 8×8 images: 64 → 256 → 128 (features) → 10 (logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 128), nn.GELU())
        self.classify = nn.Linear(128, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, 8, 8) in [-1, 1] → (B, 128)."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))


def train_judge(
    images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int
) -> tuple[DigitJudge, float]:
    """Train the judge on a fixed 80 % split (with small shifts as augmentation); return it and its
    accuracy on the held-out 20 %."""
    torch.manual_seed(seed)
    train, test = split(len(images), seed)
    judge = DigitJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in trange(steps, desc="judge", unit="step"):
        idx = train[torch.randint(len(train), (128,), generator=g)]
        x = images[idx]
        dy, dx = torch.randint(-1, 2, (2,), generator=g).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        loss = nn.functional.cross_entropy(judge(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    judge.eval()
    with torch.no_grad():
        acc = (judge(images[test]).argmax(1) == labels[test]).float().mean().item()
    return judge, acc


@torch.no_grad()
def prompt_accuracy(judge: DigitJudge, images: np.ndarray, prompts: list[str]) -> float:
    """Share of generated uint8 images (N, 8, 8) that the judge assigns to their prompt's digit."""
    x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    want = torch.tensor([label_of(p) for p in prompts])
    return (judge(x).argmax(1) == want).float().mean().item()
