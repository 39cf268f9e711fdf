"""Images depend on (prompt, seed) only: not on batching, order or how items are split."""

import pytest
import torch
from tiny import tiny_transformer

from fastflux_core.embedded import build_scheduler
from fastflux_core.errors import FastFluxError
from fastflux_core.params import SamplingParams
from fastflux_core.prompts import GenItem, PromptEmbeds, prompt_items
from fastflux_core.sampling import initial_noise, latent_size, sample_latents


def _embeds(n: int = 3) -> PromptEmbeds:
    g = torch.Generator().manual_seed(0)
    return PromptEmbeds([f"p{i}" for i in range(n)], torch.randn(n, 5, 32, generator=g), torch.randn(n, 32, generator=g))


def _sample(items, batch_size, model=None):
    model = model or tiny_transformer()
    s = SamplingParams(height=8, width=8, steps=4, guidance_scale=3.5, batch_size=batch_size)
    return sample_latents(model, build_scheduler(), _embeds(), items, s, latent_channels=4, scale_factor=1, progress=False)


def test_noise_depends_only_on_seed():
    a = initial_noise([GenItem(0, 5), GenItem(1, 6)], 4, 8, 8)
    b = initial_noise([GenItem(2, 6)], 4, 8, 8)
    torch.testing.assert_close(a[1], b[0])
    assert not torch.allclose(a[0], a[1])


def test_batching_and_splitting_do_not_change_images():
    model = tiny_transformer()
    items = prompt_items(3, 2, seed=10)  # 6 items
    whole = _sample(items, batch_size=6, model=model)
    assert whole.shape == (6, 4, 8, 8)
    ones = _sample(items, batch_size=1, model=model)
    torch.testing.assert_close(whole, ones, rtol=1e-4, atol=1e-5)
    # two "processes", each with half of the items, in reversed order
    half_a = _sample(items[:3][::-1], batch_size=2, model=model)
    half_b = _sample(items[3:], batch_size=4, model=model)
    torch.testing.assert_close(torch.cat([half_a.flip(0), half_b]), whole, rtol=1e-4, atol=1e-5)


def test_seed_and_prompt_change_images():
    model = tiny_transformer()
    out = _sample([GenItem(0, 1), GenItem(0, 2), GenItem(1, 1)], batch_size=3, model=model)
    assert not torch.allclose(out[0], out[1])  # other seed
    assert not torch.allclose(out[0], out[2])  # other prompt


def test_latent_size_is_exact_or_refused():
    """FluxPipeline rounds 1000 px down to 992; we refuse instead of scoring another size."""
    assert latent_size(1024, 1024, 8) == (128, 128)
    assert latent_size(8, 8, 1) == (8, 8)
    with pytest.raises(FastFluxError, match="1000×1024 is not a multiple of 16"):
        latent_size(1000, 1024, 8)
