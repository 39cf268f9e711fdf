"""The embedded default's dataset, captions and judge."""

import numpy as np
import pytest
import torch

from fastflux_core import digits


def test_dataset_is_real_digits():
    images, labels = digits.load_digits()
    assert images.shape == (1797, 1, 8, 8)
    assert images.min() == -1 and images.max() == 1
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_label_of():
    from fastflux_core.prompts import label_of  # what a prompt names is the prompt's (digits' judge reads it)

    assert label_of("a handwritten digit seven") == 7
    assert label_of("The digit 0, neatly") == 0
    with pytest.raises(ValueError):
        label_of("a cat")
    with pytest.raises(ValueError):
        label_of("one or two")


def test_captions_name_their_class():
    prompts, labels = digits.captions()
    assert [digits.label_of(p) for p in prompts] == labels.tolist()


def test_judge_learns_and_scores_prompt_accuracy():
    images, labels = digits.load_digits()
    judge, acc = digits.train_judge(images, labels, steps=150, seed=0)
    assert acc > 0.85
    _, test = digits.split(len(images), 0)
    real = ((images[test, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    right = [f"the digit {int(y)}" for y in labels[test]]
    wrong = [f"the digit {(int(y) + 1) % 10}" for y in labels[test]]
    assert digits.prompt_accuracy(judge, real, right) > 0.85
    assert digits.prompt_accuracy(judge, real, wrong) < 0.15
    assert judge.features(images[:3]).shape == (3, 128)
    assert isinstance(real, np.ndarray)
