"""The exported pruned model: diffusers round trip, LoRA merged, ratio 0 = base, FluxPipeline use."""

import numpy as np
import torch
from tiny import tiny_transformer

from fastflux_core.assemble import PAPER_TABLE6
from fastflux_core.export import PrunedFluxTransformer2DModel, merge_lora, to_pruned
from fastflux_core.flux import FluxAdapter
from fastflux_core.lora import inject_lora
from fastflux_core.params import n_replaced
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock
from test_adapter import _inputs, _model_forward


def _chain_like_model(seed=0, guidance=True):
    """A tiny model as the chain leaves it: trained (non-zero) LoRA on two blocks, two linears."""
    m = tiny_transformer(seed, guidance_embeds=guidance)
    a = FluxAdapter(m)
    inject_lora(a, [0, 4], rank=4, alpha=4.0, seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    for i in (1, 2):
        rep = LinearReplacement(m.inner_dim, a.blocks[i].kind)
        for s in rep.streams:
            rep.set_affine(s, torch.randn(m.inner_dim, m.inner_dim, generator=g) * 0.05, torch.randn(m.inner_dim, generator=g) * 0.05)
        a.swap(i, rep)
    return m


@torch.no_grad()
def test_exported_model_loads_back_with_the_same_output(tmp_path):
    m = _chain_like_model()
    x = _inputs()
    in_memory = _model_forward(m, x)  # peft layers active
    merge_lora(m)
    pruned = to_pruned(m, [1, 2])
    pruned.save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path), use_safetensors=True)
    assert loaded.config.replaced_blocks == [1, 2]
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(_model_forward(loaded, x), in_memory, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in tiny_transformer().parameters())


@torch.no_grad()
def test_deleted_blocks_export_as_the_identity(tmp_path):
    """A chain with a deleted block (``solve.replacement: delete``) exports it as the identity,
    listed in ``deleted_blocks``, with no weights: the loaded model computes what the chain did."""
    m = _chain_like_model()
    FluxAdapter(m).skip(3)
    x = _inputs()
    in_memory = _model_forward(m, x)
    merge_lora(m)
    to_pruned(m, [1, 2], [3]).save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path), use_safetensors=True)
    assert loaded.config.deleted_blocks == [3] and isinstance(FluxAdapter(loaded).block(3), SkipBlock)
    assert not any(n.startswith("single_transformer_blocks.1.") for n, _ in loaded.named_parameters())
    torch.testing.assert_close(_model_forward(loaded, x), in_memory, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_no_replaced_blocks_reproduces_the_base(tmp_path):
    base = tiny_transformer(3)
    pruned = to_pruned(tiny_transformer(3), [])
    pruned.save_pretrained(str(tmp_path))
    loaded = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path))
    x = _inputs()
    torch.testing.assert_close(_model_forward(loaded, x), _model_forward(base, x), rtol=0, atol=0)


def test_ratio_to_n():
    assert [n_replaced(r, 57) for r in sorted(PAPER_TABLE6)] == [2, 5, 8, 11, 14, 17]
    assert [n_replaced(r, 12) for r in (0.0, 0.1, 0.15, 0.2, 0.25)] == [0, 1, 1, 2, 3]
    assert n_replaced(0.2, 5) == 1  # 0.2 · 5 = 1.0000000000000002 in floats: still 1, never 2


def test_usable_as_the_transformer_of_a_flux_pipeline(tmp_path, tiny_flux_folder):
    from diffusers import FluxPipeline

    m = FluxPipeline.from_pretrained(str(tiny_flux_folder)).transformer
    a = FluxAdapter(m)
    a.swap(3, LinearReplacement(m.inner_dim, "single"))
    to_pruned(m, [3]).save_pretrained(str(tmp_path / "pruned"))
    transformer = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path / "pruned"))
    pipe = FluxPipeline.from_pretrained(str(tiny_flux_folder), transformer=transformer)
    out = pipe("a photo of a cat", height=16, width=16, num_inference_steps=2, max_sequence_length=16,
               output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()
