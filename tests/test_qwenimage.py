"""The Qwen-Image adapter (fastflux_core/qwenimage.py, issue 31): block by block it computes what
``QwenImageTransformer2DModel`` computes — padded text masked as the pipeline masks it — with the
schedule and image shapes ``QwenImagePipeline`` hands it; a stand-in takes a block's place in the
model's own forward; the pruned class saves and loads back the same model."""

from __future__ import annotations

import pytest
import torch

from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import latent_ids
from fastflux_core.families import adapter_for, family_of_config
from fastflux_core.pruned_flux import PrunedQwenImageTransformer2DModel, QwenImageReplacement, QwenImageSkip
from fastflux_core.qwenimage import QwenImageAdapter, text_mask

CONFIG = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=3, attention_head_dim=8,
              num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=(2, 2, 4))


def tiny_qwen(seed: int = 0):
    """A Qwen-Image transformer: 3 double blocks, width 16, 16-channel tokens (4 latent channels), 12-wide text."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(**CONFIG).eval()


# QwenImagePipeline's scheduler config (dynamic shift, exponential time shift, terminal 0.02)
SCHEDULER = dict(use_dynamic_shifting=True, shift=1.0, base_image_seq_len=256, max_image_seq_len=8192,
                 base_shift=0.5, max_shift=0.9, shift_terminal=0.02, time_shift_type="exponential")


def tiny_pipeline():
    """A QwenImagePipeline around :func:`tiny_qwen` with a 4-channel 3-D VAE (scale 2) and no text encoder:
    prompt embeddings and their masks are given to it."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline

    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    return QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae, text_encoder=None,
                             tokenizer=None, transformer=tiny_qwen())


def inputs(b: int = 2, h: int = 4, w: int = 6, n_txt: int = 5, padded: int = 2, seed: int = 1) -> ModelInputs:
    """Packed latents of an h × w latent grid; the last ``padded`` text tokens of the first prompt are
    padding (zero states, as the pipeline pads a shorter prompt)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, n_txt, 12, generator=g)  # (B, N_txt, D_text)
    if padded:
        text[0, -padded:] = 0
    return ModelInputs(hidden_states=torch.randn(b, (h // 2) * (w // 2), 16, generator=g),  # (B, N_img, C_tok)
                       encoder_hidden_states=text, pooled_projections=torch.zeros(b, 0),
                       timestep=torch.rand(b, generator=g), img_ids=latent_ids(h, w), txt_ids=torch.zeros(n_txt, 3))


@pytest.mark.parametrize("padded", [2, 0])
def test_blocks_one_by_one_equal_the_models_forward(padded):
    a = adapter_for(tiny_qwen())
    assert isinstance(a, QwenImageAdapter)
    x = inputs(padded=padded)
    with torch.no_grad():
        whole = a.call(x)
        s = a.embed(x)
        assert (s.text_mask is None) == (padded == 0)
        for i in range(len(a.blocks)):
            s = a.run(s, i, i + 1)
        assert torch.allclose(a.head(s), whole, atol=1e-5), (a.head(s) - whole).abs().max()
        assert torch.allclose(a.forward(x), whole, atol=1e-5)


def test_padding_is_masked_not_attended():
    """Text padding changes nothing: the first prompt padded with two more zero tokens gives the
    output it gives alone (the mask keeps padding out of attention), while unmasked it would not."""
    a = QwenImageAdapter(tiny_qwen())
    x = inputs(b=1, padded=2)
    cut = ModelInputs(x.hidden_states, x.encoder_hidden_states[:, :3], x.pooled_projections, x.timestep,
                      x.img_ids, torch.zeros(3, 3))
    with torch.no_grad():
        assert torch.allclose(a.forward(x), a.forward(cut), atol=1e-5)
        unmasked = a.model(hidden_states=x.hidden_states, encoder_hidden_states=x.encoder_hidden_states,
                           timestep=x.timestep, img_shapes=[[(1, 2, 3)]], return_dict=False)[0]
        assert not torch.allclose(unmasked, a.forward(cut), atol=1e-3)


def test_the_pipeline_hands_the_model_what_the_adapter_builds():
    """A tiny QwenImagePipeline (prompt embeddings and their mask given: no text encoder) records every
    transformer call: the adapter's schedule is the pipeline's, the mask it reads back from the padded
    embeddings is the pipeline's, and its forward on those inputs is the model's output."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = tiny_pipeline()
    model = pipe.transformer
    seen = []
    real = model.forward
    model.forward = lambda **kw: seen.append((kw, real(**kw))) or seen[-1][1]
    x = inputs(b=2, padded=2)
    mask = x.encoder_hidden_states.ne(0).any(-1).long()  # what the pipeline's encoder returns beside the states
    pipe(prompt_embeds=x.encoder_hidden_states, prompt_embeds_mask=mask, height=16, width=24, num_inference_steps=3,
         output_type="latent", generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3
    a = QwenImageAdapter(model)
    n_img = seen[0][0]["hidden_states"].shape[1]  # 16×24 pixels → an 8×12 latent (VAE scale 2) → 4×6 tokens
    assert n_img == 24 and seen[0][0]["img_shapes"] == [[(1, 4, 6)]] * 2
    steps = QwenImageAdapter.timesteps(FlowMatchEulerDiscreteScheduler(**SCHEDULER), 3, n_img, torch.device("cpu"))
    assert torch.allclose(torch.stack([kw["timestep"][0] for kw, _ in seen]), steps / 1000)
    for kw, out in seen:
        assert torch.equal(kw["encoder_hidden_states_mask"].bool(), text_mask(kw["encoder_hidden_states"]))
        y = ModelInputs(kw["hidden_states"], kw["encoder_hidden_states"], torch.zeros(2, 0), kw["timestep"],
                        latent_ids(8, 12), torch.zeros(5, 3))
        with torch.no_grad():
            assert torch.allclose(a.forward(y), out[0], atol=1e-5)


def test_a_stand_in_takes_a_blocks_place_in_the_models_own_forward():
    """A replacement at g = 0 and a skip leave the state as it was; a solved (non-zero) replacement
    gives the same output through the model's own forward (its block call) and the adapter's run."""
    a = QwenImageAdapter(tiny_qwen())
    x = inputs()
    with torch.no_grad():
        s = a.embed(x)
        for stand_in in (a.replacement(1), a.skip_block(1)):
            a.swap(1, stand_in)
            out = a.run(s, 1, 2)
            assert torch.equal(out.hidden_states, s.hidden_states)
            assert torch.equal(out.encoder_hidden_states, s.encoder_hidden_states)
        r = a.replacement(1, conditioned=True)
        g = torch.Generator().manual_seed(3)
        for stream in r.streams:
            r.set_affine(stream, 0.1 * torch.randn(16, 16, generator=g), 0.1 * torch.randn(16, generator=g))
            r.set_conditioning(stream, 0.1 * torch.randn(16, 16, generator=g))
        a.swap(1, r)
        assert isinstance(r, QwenImageReplacement) and isinstance(a.skip_block(0), QwenImageSkip)
        assert torch.allclose(a.call(x), a.forward(x), atol=1e-5)


def test_capture_reads_a_blocks_streams_and_temb_from_the_models_call():
    """What capture's hook sees of a block call (call_inputs / call_outputs) is the state the adapter
    hands that block and what it returns."""
    a = QwenImageAdapter(tiny_qwen())
    x = inputs()
    seen = {}
    a.block(1).register_forward_hook(lambda m, args, kw, out: seen.update(i=a.call_inputs(args, kw, 5),
                                                                         o=a.call_outputs(out, 5)), with_kwargs=True)
    with torch.no_grad():
        a.call(x)
        before = a.run(a.embed(x), 0, 1)
        after = a.run(before, 1, 2)
    img, txt, temb = seen["i"]
    torch.testing.assert_close(img, before.hidden_states)
    torch.testing.assert_close(txt, before.encoder_hidden_states)
    torch.testing.assert_close(temb, before.temb)
    torch.testing.assert_close(seen["o"][1], after.hidden_states)


def test_gradient_checkpointing_changes_nothing_but_memory():
    a = QwenImageAdapter(tiny_qwen())
    a.swap(2, a.replacement(2))
    x = inputs()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            a.model.enable_gradient_checkpointing()
        a.model.zero_grad()
        loss = a.forward(x).square().mean()
        loss.backward()
        grads.append(a.model.transformer_blocks[0].attn.to_q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_the_pruned_class_saves_and_loads_the_same_model(tmp_path):
    """A pruned Qwen-Image model (one block replaced, one deleted) built from its config, saved and
    loaded back — original or contiguous numbering — gives the same output; the plain class refuses it."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    pruned = PrunedQwenImageTransformer2DModel(**CONFIG, replaced_blocks=[1], deleted_blocks=[2]).eval()
    a = QwenImageAdapter(pruned)
    r = a.block(1)
    with torch.no_grad():
        r.set_affine("img", 0.1 * torch.eye(16), torch.zeros(16))
        out = a.call(inputs())
    for numbering in ("original", "contiguous"):
        pruned.save_pretrained(tmp_path / numbering, numbering=numbering)
        back = PrunedQwenImageTransformer2DModel.from_pretrained(tmp_path / numbering).eval()
        with torch.no_grad():
            torch.testing.assert_close(QwenImageAdapter(back).call(inputs()), out)
    assert family_of_config({"_class_name": "PrunedQwenImageTransformer2DModel"}) is QwenImageAdapter
    with pytest.raises(Exception, match="fastflux-pruned"):
        QwenImageTransformer2DModel.from_pretrained(tmp_path / "original")


@pytest.mark.parametrize("switch", ["zero_cond_t", "use_additional_t_cond", "guidance_embeds"])
def test_a_variant_whose_forward_differs_is_refused_by_name(switch):
    with pytest.raises(ValueError, match=switch):
        QwenImageAdapter.block_refs({**CONFIG, switch: True})


def test_the_sandwich_runs_its_blocks_with_the_text_mask():
    """Sandwich Training's boundary carries the text mask: blocks 1..2 on x_1 reproduce y_2 exactly
    through take / SandwichBlocks / micro_step — and would not with the padding attended."""
    from fastflux_core.boundary import Boundary, SandwichBlocks, micro_step

    a = QwenImageAdapter(tiny_qwen())
    with torch.no_grad():
        s = a.embed(inputs(padded=2))
        xu = a.run(s, 0, 1)
        yd = a.run(xu, 1, 3)
        b = Boundary(xu.hidden_states, xu.encoder_hidden_states, xu.temb, yd.hidden_states, yd.encoder_hidden_states,
                     mask=xu.text_mask)
        x, y = b.take(torch.arange(2), torch.device("cpu"))
        assert x["mask"] is not None and b.take(torch.tensor([1]), torch.device("cpu"))[0]["mask"] is None
        net = SandwichBlocks(a, 1, 2)
        assert float(micro_step(net, x, y, s.image_rotary_emb, torch.ones(()))) < 1e-10
        assert float(micro_step(net, {**x, "mask": None}, y, s.image_rotary_emb, torch.ones(()))) > 1e-6


def test_the_memory_estimator_measures_qwen_image_as_a_real_run_computes(tmp_path, monkeypatch):
    """Fake tensors have no values for the text mask (taken as absent: fastflux_core/fake_gpu.py) nor the
    rotary grid (given): the estimator's fake sampling call counts the FLOPs a real one does."""
    from tiny import repo_params

    from fastflux_core.params_file import parse_params
    from fastflux_core.stage_peaks import measure_sampling

    monkeypatch.chdir(tmp_path)  # no data/base here: the config comes from embedded.family
    d = repo_params()
    d["embedded"]["family"] = "qwenimage"
    params = parse_params(d)
    fake, real = measure_sampling(params, "resident", capture=True), measure_sampling(params, "resident", real="cpu")
    assert fake.peak > 0 and fake.flops == real.flops


def test_least_squares_rows_are_drawn_among_unpadded_text_tokens_only():
    """Capture's text rows for a padded prompt come from its own tokens (repeated when it has fewer than
    capture.text_tokens); an unpadded prompt gets the very draw it gets without a mask."""
    from fastflux_core.capture import Armed, BlockIOHooks
    from fastflux_core.prompts import prompt_items

    armed = Armed([0], prompt_items(2, 1, 0), [1.0])
    armed(0, slice(0, 2))
    hooks = BlockIOHooks(writer=None, armed=armed, k_img=4, k_txt=6, seed=0, block_name="d00")
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, 4:] = False  # the first prompt: 4 tokens, then padding
    picks = hooks._pick(10, 6, "txt", valid)
    assert set(picks[0].tolist()) == {0, 1, 2, 3} and int(picks[0].bincount().max()) == 2
    assert torch.equal(picks[1], hooks._pick(10, 6, "txt")[1])


def test_the_sandwich_loss_ignores_padded_text():
    """What the model computes at padded text positions is never read: the sandwich's error and its
    target norm do not change when those positions' targets do."""
    from fastflux_core.boundary import Boundary, SandwichBlocks, micro_step, sandwich_loss

    a = QwenImageAdapter(tiny_qwen())
    with torch.no_grad():
        s = a.embed(inputs(padded=2))
        xu = a.run(s, 0, 1)
        yd = a.run(xu, 1, 3)
    noisy = yd.encoder_hidden_states.clone()
    noisy[0, -2:] += 5.0  # only the padded rows
    b, b_noisy = (Boundary(xu.hidden_states, xu.encoder_hidden_states, xu.temb, yd.hidden_states, y_txt, mask=xu.text_mask)
                  for y_txt in (yd.encoder_hidden_states, noisy))
    assert float(b.target_norm(torch.arange(2))) == float(b_noisy.target_norm(torch.arange(2)))
    assert sandwich_loss(a, b, s.image_rotary_emb, 1, 2, 2, "cpu") == sandwich_loss(a, b_noisy, s.image_rotary_emb, 1, 2, 2, "cpu")
    x, y = b_noisy.take(torch.arange(2), torch.device("cpu"))
    with torch.no_grad():
        assert float(micro_step(SandwichBlocks(a, 1, 2), x, y, s.image_rotary_emb, torch.ones(()))) < 1e-10
