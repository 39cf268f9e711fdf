"""Classifier-free guidance (``sampling.true_cfg_scale`` > 1, issue 31): sampling combines a call with
the prompts and one with the negative prompt as StableDiffusion3Pipeline and QwenImagePipeline do;
capture records each sample's unconditional twin beside it, and the sandwich's inputs hand that twin
the negative prompt's states; the budget counts both calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import digit_captions, tiny_params, tiny_workdir

from fastflux_core import source, text
from fastflux_core.capture import capture_step
from fastflux_core.chain import ChainState, make_plan
from fastflux_core.chain_model import build_chain_model
from fastflux_core.codec import pack, unpack
from fastflux_core.errors import FastFluxError
from fastflux_core.prompts import PromptEmbeds, prompt_items
from fastflux_core.sampling import initial_noise, latent_size, sample_latents
from fastflux_core.store import StoreReader
from fastflux_core.training import CapturedInputs


def with_negative(embeds: PromptEmbeds, seed: int = 5) -> PromptEmbeds:
    g = torch.Generator().manual_seed(seed)
    neg = (torch.randn(1, *embeds.prompt_embeds.shape[1:], generator=g), torch.randn(1, *embeds.pooled.shape[1:], generator=g))
    return dataclasses.replace(embeds, negative=neg)


def test_negative_states_are_saved_selected_and_asked_for(tmp_path):
    plain = digit_captions()
    with pytest.raises(FastFluxError, match="re-run stage encode with sampling.true_cfg_scale > 1"):
        plain.select([0, 1], True)
    guided = with_negative(plain)
    guided.save(tmp_path / "e.safetensors")
    back = PromptEmbeds.load(tmp_path / "e.safetensors")
    assert torch.equal(back.negative[0], guided.negative[0]) and torch.equal(back.negative[1], guided.negative[1])
    states, pooled = back.select([3, 4], torch.tensor([True, False]))
    assert torch.equal(states[0], guided.negative[0][0]) and torch.equal(states[1], plain.prompt_embeds[4])
    plain.save(tmp_path / "p.safetensors")  # without guidance: the file as it always was
    assert PromptEmbeds.load(tmp_path / "p.safetensors").negative is None


def _sd3_params(path, **sampling):
    from test_sd3_folder import _sd3_params as base

    params = base(path)
    return params.model_copy(update={"sampling": params.sampling.model_copy(update=sampling)})


@torch.no_grad()
def test_sampler_equals_sd3_pipeline_with_classifier_free_guidance(tiny_sd3_folder):
    """SD3.5's guidance: our sampler at true_cfg_scale 2.5 with the negative prompt encoded by stage
    encode's code gives StableDiffusion3Pipeline's latents at guidance_scale 2.5 with that negative
    prompt (its own text encoders on the prompt strings) — and not the unguided ones."""
    from diffusers import StableDiffusion3Pipeline

    params = _sd3_params(tiny_sd3_folder, true_cfg_scale=2.5, negative_prompt="blurry")
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_folder))
    prompts = ["a red cube", "a blue sphere"]
    embeds = text.encode_prompts(text.load_text_encoder(params.model, params.text), prompts, batch_size=2,
                                 negative_prompt="blurry")
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    ours = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    theirs = pipe(prompt=prompts, negative_prompt="blurry", max_sequence_length=params.text.max_sequence_length,
                  latents=initial_noise(items, codec.latent_channels, h, w), height=params.sampling.height,
                  width=params.sampling.width, num_inference_steps=params.sampling.steps, guidance_scale=2.5,
                  output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    unguided = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items,
                              params.sampling.model_copy(update={"true_cfg_scale": 1.0}), codec.latent_channels,
                              codec.scale_factor, progress=False)
    assert (unguided - ours).abs().max() > 1e-2


@torch.no_grad()
def test_sampler_equals_qwen_image_pipeline_with_true_cfg():
    """Qwen-Image's guidance rescales the combined velocity to the conditional one's norm: our sampler
    at true_cfg_scale 4 equals QwenImagePipeline's (prompt and negative embeddings with their masks)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from test_qwenimage import SCHEDULER, inputs, tiny_pipeline

    from fastflux_core.params import SamplingParams

    pipe = tiny_pipeline()
    model = pipe.transformer
    x = inputs(b=2, padded=2)
    neg = inputs(b=1, padded=3, seed=9).encoder_hidden_states  # (1, 5, 12): a shorter negative prompt
    embeds = PromptEmbeds(["a", "b"], x.encoder_hidden_states, torch.zeros(2, 0), (neg, torch.zeros(1, 0)))
    sampling = SamplingParams(height=16, width=24, steps=3, guidance_scale=1.0, true_cfg_scale=4.0, batch_size=2)
    items = prompt_items(2, 1, 3)
    ours = sample_latents(model, FlowMatchEulerDiscreteScheduler(**SCHEDULER), embeds, items, sampling, 4, 2,
                          progress=False)  # (2, 4, 8, 12)
    mask = lambda e: e.ne(0).any(-1).long()  # noqa: E731 — what the pipeline's encoder returns beside the states
    negs = neg.expand(2, -1, -1)
    theirs = pipe(prompt_embeds=x.encoder_hidden_states, prompt_embeds_mask=mask(x.encoder_hidden_states),
                  negative_prompt_embeds=negs, negative_prompt_embeds_mask=mask(negs), true_cfg_scale=4.0,
                  latents=pack(initial_noise(items, 4, 8, 12)), height=16, width=24, num_inference_steps=3,
                  output_type="latent").images  # (2, 24, 16) packed
    torch.testing.assert_close(ours, unpack(theirs, 8, 12), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def guided_capture(tmp_path_factory):
    root, mp = tiny_workdir(tmp_path_factory, "cfg", train_steps=20)
    params = tiny_params(**{"sampling.true_cfg_scale": 3.0})
    sets = {name: with_negative(digit_captions(name=name)) for name in ("calibration", "training")}
    step = make_plan([3, 1, 4], 3, 5, params.sandwich.width)[0]
    out = root / "capture"
    out.mkdir()
    summary = capture_step(params, step, ChainState(), sets["calibration"], sets["training"], "b3", out)
    yield {"params": params, "sets": sets, "out": out, "summary": summary}
    mp.undo()


def test_capture_records_every_sample_and_its_unconditional_twin(guided_capture):
    """Each item at each captured step twice: the same noisy latent and timestep, once with its prompt
    and once with the negative prompt (flag ``negative``, prompt index kept); the least-squares rows
    of the twin are the block's input and output under the negative prompt."""
    c = guided_capture
    params = c["params"]
    for name in ("calibration", "training"):
        store = StoreReader(c["out"] / f"{name}.zarr")
        s = getattr(params.prompts, name)
        n_items = len(prompt_items(10, s.images_per_prompt, s.seed))
        assert store.n_samples == c["summary"][name]["samples"] == 2 * n_items * params.capture.timesteps
        negative = store.read("negative")
        assert negative.dtype == torch.bool and int(negative.sum()) == store.n_samples // 2
        prompt, seed, step = (store.read(a).tolist() for a in ("prompt", "seed", "schedule_step"))  # read once
        key = lambda r: (prompt[r], seed[r], step[r])  # noqa: E731
        pos = {key(r): r for r in range(store.n_samples) if not negative[r]}
        neg = {key(r): r for r in range(store.n_samples) if negative[r]}
        assert pos.keys() == neg.keys()  # a twin for every sample
        if name == "training":
            lat = store.read("latents")
            for k in list(pos)[:6]:
                assert torch.equal(lat[pos[k]], lat[neg[k]])  # the same x_t, other text
        else:
            txt = store.read("block_in_txt").reshape(store.n_samples, params.capture.text_tokens, -1)
            k = next(iter(pos))
            assert not torch.allclose(txt[pos[k]], txt[neg[k]])


def test_the_sandwich_hands_an_unconditional_twin_the_negative_prompt(guided_capture):
    c = guided_capture
    store = StoreReader(c["out"] / "training.zarr")
    embeds = c["sets"]["training"]
    model = build_chain_model(c["params"], ChainState()).model
    inputs = CapturedInputs(store, embeds, model, torch.device("cpu"))
    negative, prompt = store.read("negative"), store.read("prompt")
    (x,) = inputs.batches(torch.arange(store.n_samples), store.n_samples)
    for r in range(store.n_samples):
        want = embeds.negative[0][0] if negative[r] else embeds.prompt_embeds[int(prompt[r])]
        assert torch.equal(x.encoder_hidden_states[r].float(), want.float())


def test_the_budget_counts_both_calls(monkeypatch):
    """true_cfg_scale > 1 doubles every sampling stage's FLOPs, the capture stores (and their negative
    flags) and the sandwich's samples — not the peak (two calls of a batch, one after the other)."""
    import yaml
    from test_budget import ROOT, stub_measurements

    from fastflux_core import budget
    from fastflux_core.params_file import parse_params
    from fastflux_core.shapes import Shapes, capture_bytes

    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    assumed = {"calibration": 64, "training": 64, "importance": 16, "evaluation": 64}
    stub_measurements(monkeypatch, transformer_per_item_step=10**9, recompute_per_sample_block=10**9)
    plain, guided = parse_params(d), parse_params({**d, "sampling": {**d["sampling"], "true_cfg_scale": 3.0}})
    rows = [{r.stage: r for r in budget.plan_budget(p, 22.0, 400.0, assumed)[0]} for p in (plain, guided)]
    for stage in ("reference@evaluation", "ablate@j", "capture@k", "evaluate"):
        assert rows[1][stage].tflop > 1.9 * rows[0][stage].tflop, stage  # the decode is not doubled
        assert rows[1][stage].peak_gib == rows[0][stage].peak_gib
    assert rows[1]["sandwich@k"].tflop > 1.9 * rows[0]["sandwich@k"].tflop  # its inputs recomputed for twice the samples
    items = {"calibration": 20, "training": 40}
    plain_bytes = capture_bytes(plain.capture, plain.sampling, Shapes.of(plain), items)
    flags = (20 + 40) * 2 * len(budget.capture_schedule(plain.capture.timesteps, plain.sampling.steps))  # 1 byte each
    assert capture_bytes(guided.capture, guided.sampling, Shapes.of(guided), items) == 2 * plain_bytes + flags
