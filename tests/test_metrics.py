"""FID through clean-fid with a custom extractor, alignment scores, missing-file errors."""

import numpy as np
import pytest
import torch

from fastflux_core import digits
from fastflux_core.codec import to_uint8
from fastflux_core.errors import FastFluxError
from fastflux_core.metrics import (
    ClipAlignment, FeatureStats, JudgeAlignment, fid, image_features, inception_features, judge_features,
)
from fastflux_core.rehearsal import write_clip_stand_in, write_inception_stand_in


@pytest.fixture(scope="module")
def judge_and_digits():
    images, labels = digits.load_digits()
    judge, _ = digits.train_judge(images, labels, steps=150, seed=0)
    return judge, to_uint8(images), labels


def test_fid_small_for_same_distribution_large_for_other(judge_and_digits):
    judge, imgs, labels = judge_and_digits
    fx = judge_features(judge)
    cpu = torch.device("cpu")
    feats = image_features(imgs[:600], fx, cpu, 64)
    assert feats.shape == (600, 128)
    ref = FeatureStats.of(image_features(imgs[600:1200], fx, cpu, 64))
    same = fid(feats, ref)
    ones = imgs[1200:][labels[1200:].numpy() == 1]
    other = fid(image_features(ones, fx, cpu, 64), ref)
    noise = fid(image_features(np.random.default_rng(0).integers(0, 256, (200, 8, 8), dtype=np.uint8), fx, cpu, 64), ref)
    assert 0 <= same < other < noise
    # the PNG round trip through clean-fid's loader is lossless: features equal direct ones
    direct = judge.features(torch.from_numpy(imgs[:600].astype(np.float32) / 127.5 - 1).unsqueeze(1)).detach().numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-5)


def test_feature_stats_round_trip(tmp_path):
    s = FeatureStats.of(np.random.default_rng(0).normal(size=(50, 4)))
    s.save(tmp_path / "s.safetensors")
    t = FeatureStats.load(tmp_path / "s.safetensors")
    np.testing.assert_allclose(t.sigma, s.sigma)
    with pytest.raises(FastFluxError, match="at least 2"):
        FeatureStats.of(np.zeros((1, 4)))


def test_judge_alignment(judge_and_digits):
    judge, imgs, labels = judge_and_digits
    a = JudgeAlignment(judge)
    right = a.score(imgs[:200], [f"the digit {int(y)}" for y in labels[:200]])
    wrong = a.score(imgs[:200], [f"the digit {(int(y) + 3) % 10}" for y in labels[:200]])
    assert right > 0.5 and wrong < 0.1


def test_inception_missing_file_names_it(tmp_path):
    with pytest.raises(FastFluxError, match="inception-2015-12-05.pt"):
        inception_features(tmp_path, torch.device("cpu"))


def test_clip_score_from_local_folder(tmp_path):
    folder = write_clip_stand_in(tmp_path / "clip")
    a = ClipAlignment(folder, torch.device("cpu"), batch_size=3)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    s = a.score(imgs, ["a cat", "a dog", "a red car", "a house"])
    assert 0 <= s <= 100
    grey = a.score(imgs[..., 0], ["a cat", "a dog", "a red car", "a house"])  # (N, H, W) greyscale accepted
    assert 0 <= grey <= 100
    with pytest.raises(FastFluxError, match="config.json"):
        ClipAlignment(tmp_path / "nope", torch.device("cpu"))


def test_inception_path_wiring_with_a_stand_in_torchscript_file(tmp_path):
    """The real Inception cannot be downloaded here; a TorchScript stand-in with the same interface
    checks the wiring: clean-fid's loader, its 299² 'clean' resize, its (B, 2048) feature contract."""

    write_inception_stand_in(tmp_path)
    fx = inception_features(tmp_path, torch.device("cpu"))
    imgs = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    feats = image_features(imgs, fx, torch.device("cpu"), batch_size=2)
    assert feats.shape == (5, 2048) and np.isfinite(feats).all()
