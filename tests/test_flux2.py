"""The FLUX.2 adapter (fastflux_core/flux2.py, issue 31): block by block it computes what
``Flux2Transformer2DModel`` computes, with the ids, timesteps and guidance ``Flux2Pipeline`` hands it;
a stand-in takes a block's place; gradient checkpointing changes nothing but memory."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_flux2

from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import latent_ids
from fastflux_core.errors import FastFluxError
from fastflux_core.flux2 import Flux2Adapter, flux2_ids
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock


def inputs(b: int = 2, h: int = 4, w: int = 6, n_txt: int = 5, guidance: bool = True, seed: int = 1) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(hidden_states=torch.randn(b, (h // 2) * (w // 2), 16, generator=g),  # (B, N_img, C_tok)
                       encoder_hidden_states=torch.randn(b, n_txt, 24, generator=g),  # (B, N_txt, D_text)
                       pooled_projections=torch.zeros(b, 0), timestep=torch.rand(b, generator=g),
                       img_ids=latent_ids(h, w), txt_ids=torch.zeros(n_txt, 3),
                       guidance=torch.full((b,), 3.5) if guidance else None)


@pytest.mark.parametrize("guidance", [True, False])
def test_blocks_one_by_one_equal_the_models_forward(guidance):
    a = Flux2Adapter(tiny_flux2(guidance_embeds=guidance))
    x = inputs(guidance=guidance)
    with torch.no_grad():
        whole = a.call(x)
        s = a.embed(x)
        for i in range(len(a.blocks)):  # one block at a time, across the double → single boundary
            s = a.run(s, i, i + 1)
        assert torch.allclose(a.head(s), whole, atol=1e-5), (a.head(s) - whole).abs().max()
        assert torch.allclose(a.forward(x), whole, atol=1e-5)


def test_the_pipeline_hands_the_model_what_the_adapter_builds():
    """A tiny Flux2Pipeline (prompt embeddings given: no text encoder) records every transformer call:
    the adapter's schedule, four-column ids and guidance are the pipeline's, and its forward on those
    inputs is the model's output."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    vae = AutoencoderKLFlux2(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                             norm_num_groups=32, sample_size=16)
    sched = dict(use_dynamic_shifting=True, shift=3.0, base_image_seq_len=256, max_image_seq_len=4096)
    model = tiny_flux2()
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(**sched), vae=vae, text_encoder=None,
                         tokenizer=None, transformer=model)
    seen = []
    real = model.forward
    model.forward = lambda **kw: seen.append((kw, real(**kw))) or seen[-1][1]
    embeds = torch.randn(1, 5, 24, generator=torch.Generator().manual_seed(0))
    pipe(prompt_embeds=embeds, height=16, width=24, num_inference_steps=3, guidance_scale=2.5,
         output_type="latent", generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3
    a = Flux2Adapter(model)
    n_img = seen[0][0]["hidden_states"].shape[1]  # 16×24 pixels → an 8×12 latent (VAE scale 2) → 4×6 tokens
    steps = Flux2Adapter.timesteps(FlowMatchEulerDiscreteScheduler(**sched), 3, n_img, torch.device("cpu"))
    assert torch.allclose(torch.stack([kw["timestep"][0] for kw, _ in seen]), steps / 1000)
    h, w = 2 * int(seen[0][0]["img_ids"][0, :, 1].max() + 1), 2 * int(seen[0][0]["img_ids"][0, :, 2].max() + 1)
    txt4, img4 = flux2_ids(torch.zeros(5, 3), latent_ids(h, w))
    kw0 = seen[0][0]
    assert torch.equal(kw0["txt_ids"][0].float(), txt4) and torch.equal(kw0["img_ids"][0].float(), img4)
    assert torch.equal(kw0["guidance"], torch.tensor([2.5]))
    for kw, out in seen:
        x = ModelInputs(kw["hidden_states"], kw["encoder_hidden_states"], torch.zeros(1, 0), kw["timestep"],
                        latent_ids(h, w), torch.zeros(5, 3), kw["guidance"])
        with torch.no_grad():
            assert torch.allclose(a.forward(x), out[0], atol=1e-5)


def test_a_stand_in_takes_a_blocks_place_and_zero_is_the_identity():
    """A LinearReplacement at g = 0 and a SkipBlock both leave the state as it was, at a double and at
    a single block; swapping the block back restores the model's output."""
    a = Flux2Adapter(tiny_flux2())
    x = inputs()
    with torch.no_grad():
        whole = a.forward(x)
        for i in (1, 2):  # the last double, the first single
            before = a.run(a.embed(x), 0, i)
            for stand_in in (LinearReplacement(a.model.inner_dim, a.blocks[i].kind), SkipBlock()):
                block = a.swap(i, stand_in)
                after = a.run(before, i, i + 1)
                assert torch.equal(after.hidden_states, before.hidden_states)
                assert torch.equal(after.encoder_hidden_states, before.encoder_hidden_states)
                a.swap(i, block)
        assert torch.equal(a.forward(x), whole)
        for i in (1, 2):  # the adapter's own stand-ins: the model's forward (keyword calls, joined singles) takes them
            for stand_in in (a.replacement(i), a.skip_block(i)):
                block = a.swap(i, stand_in)
                assert torch.allclose(a.call(x), a.forward(x), atol=1e-5)
                a.swap(i, block)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    a = Flux2Adapter(tiny_flux2())
    x = inputs()
    grads = []
    for checkpointing in (False, True):
        a.model.zero_grad()
        if checkpointing:
            a.model.enable_gradient_checkpointing()
        a.model.train()
        loss = (a.forward(x) ** 2).mean()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in a.model.transformer_blocks[0].parameters()]))
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1) and all(torch.allclose(u, v, atol=1e-6) for u, v in zip(g0, g1))
    assert any(u.abs().sum() > 0 for u in g0)


def test_lora_targets_name_linears_of_each_kind_and_the_width_baseline_says_it_cannot():
    a = Flux2Adapter(tiny_flux2())
    for ref in a.blocks:
        block = a.block(ref.index)
        assert all(isinstance(block.get_submodule(t), torch.nn.Linear) for t in a.lora_targets(ref.index))
    with pytest.raises(FastFluxError, match="cannot prune FLUX.2 yet: its MLPs are SwiGLU"):
        a.mlps()


class _Rows:
    """A store writer that keeps what capture appends."""

    def __init__(self):
        self.rows: dict[str, list[torch.Tensor]] = {}

    def append(self, name, rows):
        self.rows.setdefault(name, []).append(rows)


@pytest.mark.parametrize("path", ["model", "adapter"])
def test_capture_records_each_streams_tokens_and_the_models_temb(path):
    """Capture's block hooks on a single block: from the model's own call (streams joined, text first,
    no temb handed) and from the adapter's (streams apart), every recorded row is a token of its stream
    entering the block, beside that token's residual, and temb is the model's timestep embedding —
    all tokens recorded (k = n), each row matched to its token."""
    from fastflux_core.capture import Armed, BlockIOHooks
    from fastflux_core.prompts import GenItem

    a = Flux2Adapter(tiny_flux2())
    x = inputs(b=2, n_txt=5)
    n_img = x.hidden_states.shape[1]
    i = 2  # the first single block
    with torch.no_grad():
        before = a.run(a.embed(x), 0, i)
        after = a.run(before, i, i + 1)
    armed = Armed([0], [GenItem(0, 0), GenItem(1, 0)], [0.5])
    writer = _Rows()
    hooks = BlockIOHooks(writer, armed, n_img, 5, 0, "s00")
    handles = hooks.attach(a, i, n_txt=5)
    armed(0, slice(0, 2))
    with torch.no_grad():
        a.call(x) if path == "model" else a.forward(x)
    for h in handles:
        h.remove()
    got = {k: torch.cat(v) for k, v in writer.rows.items()}
    for stream, x_in, x_out in (("img", before.hidden_states, after.hidden_states),
                                ("txt", before.encoder_hidden_states, after.encoder_hidden_states)):
        rows_in, rows_res = got[f"block_in_{stream}"], got[f"residual_{stream}"]  # (b·n, D), sample-major
        n = x_in.shape[1]
        assert rows_in.shape == (2 * n, x_in.shape[2])
        for s in range(2):
            for r in range(n):
                j = int((x_in[s] - rows_in[s * n + r]).norm(dim=1).argmin())  # the token this row is
                assert torch.allclose(x_in[s, j], rows_in[s * n + r], atol=1e-5)
                assert torch.allclose(x_out[s, j] - x_in[s, j], rows_res[s * n + r], atol=1e-5)
            assert len({int((x_in[s] - rows_in[s * n + r]).norm(dim=1).argmin()) for r in range(n)}) == n
    assert torch.allclose(got["temb"], before.temb, atol=1e-6)
