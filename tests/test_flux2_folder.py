"""A FLUX.2 folder (model.source: flux2) through the code a real FLUX.2-klein folder goes through: its
text encoder, our sampler against Flux2KleinPipeline's, our decoder against the pipeline's (the VAE's
batch-norm statistics), and an export Flux2KleinPipeline loads (issue 31)."""

import json

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from test_params import _default
from tiny import with_random_linears, write_export

from fastflux_core import preflight, source, text
from fastflux_core.errors import ModelFolderError, ParamsError
from fastflux_core.export_folder import load_pipeline
from fastflux_core.families import adapter_for
from fastflux_core.params_file import parse_params
from fastflux_core.prompts import prompt_items
from fastflux_core.sampling import initial_noise, latent_size, sample_latents
from fastflux_core.text import encode_prompts


def _flux2_params(path, **sampling):
    d = _default()
    d["model"] = {"source": "flux2", "path": str(path), "dtype": "float32", "device": "cpu"}
    d["text"]["max_sequence_length"] = 16
    d["sampling"].update(height=16, width=24, steps=3, batch_size=2, **sampling)
    d["capture"]["timesteps"] = 2
    d["solve"]["condition"], d["baseline"]["ratios"] = "none", []
    return parse_params(d)


def _theirs(pipe, params, embeds, items, codec, output_type="latent"):
    """The pipeline on our noise (FLUX.2 takes it 2 × 2-patchified) without guidance (klein: none).
    Its "latent" output is the VAE's latent (de-normalised), (b, C, h, w)."""
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    noise = Flux2KleinPipeline._patchify_latents(initial_noise(items, codec.latent_channels, h, w))
    out = pipe(prompt_embeds=embeds.prompt_embeds, latents=noise, height=params.sampling.height,
               width=params.sampling.width, num_inference_steps=params.sampling.steps, guidance_scale=1.0,
               output_type=output_type).images
    return out


def test_load_encode_sample_decode(tiny_flux2_folder):
    params = _flux2_params(tiny_flux2_folder)
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a photo of a cat", "a lighthouse"], batch_size=1)
    assert embeds.prompt_embeds.shape == (2, 16, 24) and embeds.pooled.shape == (2, 0)  # Qwen3 layers 9, 18, 27
    transformer = source.load_transformer(params.model)
    assert [b.kind for b in adapter_for(transformer).blocks] == ["double", "double", "single", "single"]
    codec = source.load_codec(params.model, transformer)
    assert (type(codec).__name__, codec.latent_channels, codec.scale_factor) == ("Flux2VaeCodec", 4, 2)
    latents = sample_latents(transformer, source.load_scheduler(params.model), embeds, prompt_items(2, 1, 0),
                             params.sampling, codec.latent_channels, codec.scale_factor, progress=False)
    assert latents.shape == (2, 4, 8, 12) and codec.decode(latents).shape == (2, 16, 24, 3)
    assert source.describe_folder_base(params.model) == {"source": "flux2", "path": str(tiny_flux2_folder.resolve()),
                                                         "blocks": 4, "double_blocks": 2, "single_blocks": 2}


@torch.no_grad()
def test_sampler_and_decoder_equal_the_klein_pipeline_on_the_same_noise(tiny_flux2_folder):
    """Our seeded sampler is Flux2KleinPipeline's loop (empirical-mu schedule, four-column ids, no
    guidance) — equal latents once de-normalised with the VAE's batch-norm statistics as the pipeline
    does (the statistics are not the identity) — and equal images."""
    params = _flux2_params(tiny_flux2_folder)
    pipe = Flux2KleinPipeline.from_pretrained(str(tiny_flux2_folder))
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a red cube", "a blue sphere"], batch_size=2)
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    ours = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    torch.testing.assert_close(codec.to_vae(ours), _theirs(pipe, params, embeds, items, codec), rtol=1e-5, atol=1e-5)
    images = _theirs(pipe, params, embeds, items, codec, output_type="np")  # (2, 16, 24, 3) in [0, 1]
    assert np.abs(codec.decode(ours).astype(float) - images * 255).max() <= 1.0


def test_a_flux_folder_is_not_a_flux2_one_nor_the_reverse(tiny_flux_folder, tiny_flux2_folder):
    with pytest.raises(ModelFolderError, match="not a FLUX.2 one"):
        preflight.check_model_folder(tiny_flux_folder, "flux2")
    with pytest.raises(ModelFolderError, match=r"not a FLUX one \(model.source: flux\): set model.source: flux2$"):
        preflight.check_model_folder(tiny_flux2_folder, "flux")


def test_what_flux2_cannot_do_yet_is_refused_with_its_cause(tiny_flux2_folder):
    d = _default()
    d["model"] = {"source": "flux2", "path": str(tiny_flux2_folder)}
    d["baseline"]["ratios"] = []
    d["solve"]["condition"] = "temb"
    with pytest.raises(ParamsError, match="solve.condition: temb with model.source: flux2"):
        parse_params(d)
    d["solve"]["condition"], d["baseline"]["ratios"] = "none", [0.1]
    with pytest.raises(ParamsError, match="baseline.ratios with model.source: flux2"):
        parse_params(d)


@torch.no_grad()
def test_export_loads_in_the_klein_pipeline(tiny_flux2_folder, tmp_path):
    """A pruned FLUX.2 (the last double block and the first single block replaced by BRLL linears)
    exported beside the base's components: Flux2KleinPipeline loads it with remote code, FastFLUX's
    loader without, and both sample what the in-memory model samples."""
    params = _flux2_params(tiny_flux2_folder)
    model = with_random_linears(source.load_transformer(params.model), [1, 2])
    out, linked = write_export(model, [1, 2], tiny_flux2_folder, tmp_path)
    assert {"text_encoder", "tokenizer", "vae"} <= set(linked)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"
    assert index["transformer"] == ["pruned_flux", "PrunedFlux2Transformer2DModel"]
    pipe = Flux2KleinPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert pipe.transformer.config.replaced_blocks == [1, 2]
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a red cube", "a blue sphere"], batch_size=2)
    items, codec = prompt_items(2, 1, 3), source.load_codec(params.model, model)
    ours = sample_latents(model, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    for loaded in (pipe, load_pipeline(out)):
        torch.testing.assert_close(_theirs(loaded, params, embeds, items, codec), codec.to_vae(ours),
                                   rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours.numpy(), sample_latents(
        source.load_transformer(params.model), source.load_scheduler(params.model), embeds, items, params.sampling,
        codec.latent_channels, codec.scale_factor, progress=False).numpy())  # the replacements change the images


@pytest.mark.parametrize("inputs", ["trajectory", "noised"])
def test_capture_solve_sandwich_assemble_reload_on_a_flux2_folder(tiny_flux2_folder, tmp_path, monkeypatch, inputs):
    """``model.source: flux2`` through the chain's stages (their library calls): capture reads a single
    block's streams from the model's own joined call (trajectories) and from the adapter's split one
    (noised), its temb from the model's embedder; the block is replaced, LoRA trains on its
    neighbours, the model is assembled, reloaded and computes what the chain model computes."""
    from fastflux_core.assemble import assemble, pruned_model
    from fastflux_core.capture import capture_step, make_endpoints
    from fastflux_core.chain import ChainState, load_solution, make_plan
    from fastflux_core.evaluation import call_model, forward_inputs
    from fastflux_core.export import load_pruned
    from fastflux_core.sandwich import train_sandwich
    from fastflux_core.solve import save_solution, solve_store
    from fastflux_core.store import StoreReader

    monkeypatch.chdir(tmp_path)
    d = _default()
    d["model"] = {"source": "flux2", "path": str(tiny_flux2_folder), "dtype": "float32", "device": "cpu"}
    d["text"]["max_sequence_length"] = 8
    d["sampling"].update(height=16, width=16, steps=2, batch_size=4)
    d["importance"]["blocks"] = [0, 1, 2, 3]
    d["prompts"]["calibration"]["images_per_prompt"] = d["prompts"]["training"]["images_per_prompt"] = 1
    d.update(ratio=0.25, max_ratio=0.25, steps={"1": {"prev": 0}})
    d["capture"].update(timesteps=2, image_tokens=8, text_tokens=8, shard_samples=4, chunk_samples=4, inputs=inputs)
    d["sandwich"].update(train_steps=2, batch_size=4, micro_batch=2, round_samples=8, holdout=0.25)
    d["solve"]["condition"], d["baseline"]["ratios"] = "none", []
    params = parse_params(d)
    encoder = text.load_text_encoder(params.model, params.text)
    cal = encode_prompts(encoder, [f"a photo of object {i}" for i in range(4)], batch_size=4)
    train = encode_prompts(encoder, [f"a painting of scene {i}" for i in range(4)], batch_size=4)
    if inputs == "noised":
        make_endpoints(params, {"calibration": cal, "training": train}, tmp_path / "endpoints")

    step = make_plan([2, 0, 1, 3], 1, 4, params.sandwich.width)[0]
    assert (step.block, step.sandwich) == (2, (1, 3))  # the first single block, a double and a single beside it
    capture_step(params, step, ChainState(), cal, train, "s00", tmp_path, endpoints=tmp_path / "endpoints")
    store = StoreReader(tmp_path / "calibration.zarr")
    assert store.attrs["tokens"] == {"img": 16, "txt": 8} and store.attrs["kind"] == "single"
    sols, _ = solve_store(store, params.solve.ridge, params.solve.chunk_rows)
    assert set(sols) == {"joint"}
    save_solution(tmp_path / "solve.safetensors", sols)
    state, record = train_sandwich(params, step, ChainState(), load_solution(tmp_path / "solve.safetensors"),
                                   StoreReader(tmp_path / "training.zarr"), train)
    assert record["lora_blocks"] == [1, 3] and torch.isfinite(torch.tensor(record["holdout_loss_trained"]))
    states = [ChainState(), state]
    rec = assemble(params, states, 4, tmp_path / "pruned")
    assert rec["family"] == {"name": "flux2", "pipeline": "Flux2KleinPipeline", "transformer": "Flux2Transformer2DModel",
                             "pruned": "PrunedFlux2Transformer2DModel"}
    reloaded = load_pruned(tmp_path / "pruned" / "transformer")
    in_memory = pruned_model(params, states, 1)[0].model
    x = forward_inputs(params.sampling, in_memory, source.load_codec(params.model, in_memory), train, torch.device("cpu"))
    torch.testing.assert_close(call_model(reloaded, x), call_model(in_memory, x), rtol=1e-6, atol=1e-6)


def test_budget_measures_the_transformers_stages_of_a_flux2_folder(tiny_flux2_folder):
    """The budget command on a FLUX.2 folder — its text encoder (the class its config names), sampling
    with capture, both sandwich kinds — on fake CUDA tensors from the folder's configs alone."""
    from fastflux_core import budget, stage_peaks

    d = _default()
    d["model"] = {"source": "flux2", "path": str(tiny_flux2_folder), "dtype": "bfloat16", "device": "cuda"}
    d["text"]["max_sequence_length"] = 16
    d["sampling"].update(height=16, width=8, steps=3, batch_size=2)
    d["capture"].update(timesteps=2, image_tokens=4, text_tokens=8)
    d["importance"].update(blocks=[0, 1, 2, 3], method="proxy")
    d["metrics"].update(fid_features="inception", alignment="clip", real_images=None,
                        inception_path="/nonexistent/inception", clip_path="/nonexistent/clip")
    d["max_ratio"], d["ratio"], d["steps"] = 0.25, 0.25, {"1": {"prev": 0}}
    d["baseline"]["ratios"], d["solve"]["condition"] = [], "none"
    params = parse_params(d)
    rows, summary = budget.plan_budget(params, 22.0, 400.0, {"calibration": 4, "training": 4, "importance": 2,
                                                             "evaluation": 4})
    assert {"capture@k", "sandwich@k", "evaluate"} <= {r.stage for r in rows} and summary["chain_steps"] == 1
    assert stage_peaks.block_kinds(params) == ["double", "double", "single", "single"]  # both sandwich kinds measured
    enc = stage_peaks.measure_encode(params)
    assert enc.peak > 0 and enc.flops["per_prompt"] > 0  # Qwen3 of the folder's config, 16 tokens


def test_a_guidance_scale_a_klein_folder_would_ignore_is_refused(tiny_flux2_folder):
    """klein has no guidance embedding and FastFLUX no classifier-free guidance yet: a guidance scale
    other than 1 would change nothing — stage validate says so instead."""
    from fastflux_core.errors import FastFluxError

    refused, taken = (_flux2_params(tiny_flux2_folder, guidance_scale=g) for g in (3.5, 1.0))
    with pytest.raises(FastFluxError, match=r"sampling.guidance_scale=3.5, but .* has no guidance embedding"):
        preflight.check_guidance(refused.model, refused.sampling)
    preflight.check_guidance(taken.model, taken.sampling)


def test_a_prompt_is_counted_inside_its_chat_template(tiny_flux2_folder, capsys):
    """FLUX.2 counts text.max_sequence_length on the chat-templated prompt: the tiny klein template
    "[CLS] user : <prompt> [SEP]" leaves 8 − 4 = 4 tokens of the prompt; the encoder sees the cut."""
    from fastflux_core.flux2 import Flux2TextEncoder

    enc = Flux2TextEncoder(tiny_flux2_folder, 8, torch.device("cpu"), torch.float32)
    prompt = "a red bicycle leaning on a wall"
    assert text.check_cut(enc, [prompt, "a cat"], "set z", digits=False) == {prompt: "a red bicycle leaning"}
    assert "warning: set z: 1 of 2 prompts are longer than text.max_sequence_length (8 tokens)" in capsys.readouterr().err
    long, kept = enc.encode([prompt, "a red bicycle leaning"])[0]
    assert torch.equal(long, kept)


def test_flux2_ids_stay_exact_in_bfloat16_beyond_256_text_tokens():
    """bfloat16 holds whole numbers exactly only to 256; FLUX.2 numbers up to 512 text tokens: the
    ids the adapter builds are the pipeline's (integers) in any model dtype."""
    from fastflux_core.codec import latent_ids
    from fastflux_core.flux2 import flux2_ids

    txt, img = flux2_ids(torch.zeros(300, 3, dtype=torch.bfloat16), latent_ids(8, 12, dtype=torch.bfloat16))
    theirs_txt = Flux2KleinPipeline._prepare_text_ids(torch.zeros(1, 300, 4))[0]
    theirs_img = Flux2KleinPipeline._prepare_latent_ids(torch.zeros(1, 16, 4, 6))[0]
    assert torch.equal(txt, theirs_txt.float()) and torch.equal(img, theirs_img.float())
