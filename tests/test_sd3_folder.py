"""An SD3 folder (model.source: sd3) through the code a real SD3 / SD3.5 folder goes through: its
text encoders, our sampler against StableDiffusion3Pipeline's, and an export that
StableDiffusion3Pipeline loads."""

import json

import numpy as np
import pytest
import torch

from fastflux_core import preflight, source, stage_peaks, text
from fastflux_core.errors import ModelFolderError
from fastflux_core.export_folder import load_pipeline
from fastflux_core.families import adapter_for
from fastflux_core.params_file import parse_params
from fastflux_core.prompts import prompt_items
from fastflux_core.sampling import initial_noise, latent_size, sample_latents
from fastflux_core.text import encode_prompts
from test_params import _default
from tiny import with_random_linears, write_export


def _sd3_params(path):
    d = _default()
    d["model"] = {"source": "sd3", "path": str(path), "dtype": "float32", "device": "cpu"}
    d["text"]["max_sequence_length"] = 16
    d["sampling"].update(height=16, width=16, steps=3, batch_size=2, guidance_scale=1.0)
    d["capture"]["timesteps"] = 2
    return parse_params(d)


def test_load_encode_sample_decode(tiny_sd3_folder):
    params = _sd3_params(tiny_sd3_folder)
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a photo of a cat", "a lighthouse"], batch_size=1)
    assert embeds.prompt_embeds.shape == (2, 77 + 16, 32)  # CLIP-L|G's 77 tokens (padded to T5's width), then T5's
    assert embeds.pooled.shape == (2, 16)  # CLIP-L and CLIP-G pooled, concatenated
    transformer = source.load_transformer(params.model)
    assert [b.kind for b in adapter_for(transformer).blocks] == ["joint", "joint", "final"]
    codec = source.load_codec(params.model, transformer)
    assert (codec.latent_channels, codec.scale_factor) == (4, 2)
    latents = sample_latents(transformer, source.load_scheduler(params.model), embeds, prompt_items(2, 1, 0),
                             params.sampling, codec.latent_channels, codec.scale_factor, progress=False)
    assert codec.decode(latents).shape == (2, 16, 16, 3)
    assert source.describe_folder_base(params.model) == {"source": "sd3", "path": str(tiny_sd3_folder.resolve()),
                                                   "blocks": 3, "joint_blocks": 2, "final_blocks": 1}


def test_a_flux_folder_is_not_an_sd3_one(tiny_flux_folder, tiny_sd3_folder):
    with pytest.raises(ModelFolderError, match="not a SD3 one"):
        preflight.check_model_folder(tiny_flux_folder, "sd3")
    with pytest.raises(ModelFolderError, match="not a FLUX one"):
        preflight.check_model_folder(tiny_sd3_folder, "flux")


def _theirs(pipe, params, embeds, items, codec):
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    return pipe(prompt_embeds=embeds.prompt_embeds, pooled_prompt_embeds=embeds.pooled,
                latents=initial_noise(items, codec.latent_channels, h, w), height=params.sampling.height,
                width=params.sampling.width, num_inference_steps=params.sampling.steps, guidance_scale=1.0,
                output_type="latent").images


@torch.no_grad()
def test_sampler_equals_sd3_pipeline_on_the_same_noise(tiny_sd3_folder):
    """Our seeded sampler is StableDiffusion3Pipeline's loop without classifier-free guidance: same
    schedule (static shift 3), timestep = sigma · 1000, spatial latents — equal latents."""
    from diffusers import StableDiffusion3Pipeline

    params = _sd3_params(tiny_sd3_folder)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny_sd3_folder))
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a red cube", "a blue sphere"], batch_size=2)
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    ours = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    torch.testing.assert_close(ours, _theirs(pipe, params, embeds, items, codec), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_export_loads_in_stable_diffusion_3_pipeline(tiny_sd3_folder, tmp_path):
    """A pruned SD3 (its final block and a dual-attention block replaced by BRLL linears) exported
    beside the base's components: StableDiffusion3Pipeline loads it with remote code, FastFLUX's
    loader without, and both sample what the in-memory model samples."""
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

    params = _sd3_params(tiny_sd3_folder)
    model = with_random_linears(source.load_transformer(params.model), [0, 2])
    out, linked = write_export(model, [0, 2], tiny_sd3_folder, tmp_path)
    assert {"text_encoder_3", "tokenizer_3", "vae"} <= set(linked)
    assert json.loads((out / "model_index.json").read_text())["transformer"] == ["pruned_flux", "PrunedSD3Transformer2DModel"]
    pipe = StableDiffusion3Pipeline.from_pretrained(str(out), trust_remote_code=True)
    assert type(pipe.transformer).__name__ == "PrunedSD3Transformer2DModel" and pipe.transformer.config.replaced_blocks == [0, 2]
    assert type(DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)).__name__ == "StableDiffusion3Pipeline"
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a red cube", "a blue sphere"], batch_size=2)
    items, codec = prompt_items(2, 1, 3), source.load_codec(params.model, model)
    ours = sample_latents(model, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    torch.testing.assert_close(_theirs(pipe, params, embeds, items, codec), ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_theirs(load_pipeline(out), params, embeds, items, codec), ours, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ours.numpy(), sample_latents(
        source.load_transformer(params.model), source.load_scheduler(params.model), embeds, items, params.sampling,
        codec.latent_channels, codec.scale_factor, progress=False).numpy())  # the replacements change the images


def test_budget_measures_every_stage_of_an_sd3_folder(tiny_sd3_folder):
    """The budget command on an SD3 folder: its three text encoders, the transformer's sampling,
    capture and sandwich (both block kinds) on fake CUDA tensors from the folder's configs alone."""
    from fastflux_core import budget

    d = _default()
    d["model"] = {"source": "sd3", "path": str(tiny_sd3_folder), "dtype": "bfloat16", "device": "cuda"}
    d["text"]["max_sequence_length"] = 16
    d["sampling"].update(height=16, width=8, steps=3, batch_size=2, guidance_scale=1.0)  # non-square: the grid is given, not read
    d["capture"].update(timesteps=2, image_tokens=4, text_tokens=8)
    d["importance"].update(blocks=[0, 1, 2], method="proxy")
    d["metrics"].update(fid_features="inception", alignment="clip", real_images=None,
                        inception_path="/nonexistent/inception", clip_path="/nonexistent/clip")
    d["max_ratio"], d["ratio"], d["steps"] = 0.34, 0.34, {"1": {"prev": 0}}
    d["baseline"]["ratios"] = []
    params = parse_params(d)
    rows, summary = budget.plan_budget(params, 22.0, 400.0, {"calibration": 4, "training": 4, "importance": 2,
                                                             "evaluation": 4})
    assert {"encode", "capture@k", "sandwich@k", "evaluate"} <= {r.stage for r in rows} and summary["chain_steps"] == 1
    assert stage_peaks.block_kinds(params) == ["joint", "joint", "final"]
    u, i, d = stage_peaks.sandwich_case(params, "final")
    assert (u, i, d) == (1, 2, 2)  # a tiny model's peaks round to 0.0 GiB in the rows: measure directly
    assert stage_peaks.measure_sandwich(params, "resident", u, i, d).peak > 0
    assert stage_peaks.measure_sampling(params, "resident", capture=True).peak > 0


def test_capture_solve_sandwich_assemble_reload_on_an_sd3_folder(tiny_sd3_folder, tmp_path, monkeypatch):
    """``model.source: sd3`` through the chain's stages (their library calls), in bfloat16: the final
    block replaced (image-stream linear only), LoRA on its unpruned neighbour, assembled, reloaded."""
    from fastflux_core.assemble import assemble, pruned_model
    from fastflux_core.export import load_pruned
    from fastflux_core.solve import save_solution, solve_store
    from fastflux_core.chain import load_solution
    from fastflux_core.capture import capture_step
    from fastflux_core.chain import ChainState, make_plan
    from fastflux_core.evaluation import call_model, forward_inputs
    from fastflux_core.sandwich import train_sandwich
    from fastflux_core.store import StoreReader

    monkeypatch.chdir(tmp_path)
    d = _default()
    d["model"] = {"source": "sd3", "path": str(tiny_sd3_folder), "dtype": "bfloat16", "device": "cpu"}
    d["text"]["max_sequence_length"] = 8
    d["sampling"].update(height=16, width=16, steps=2, batch_size=4, guidance_scale=1.0)
    d["importance"]["blocks"] = [0, 1, 2]
    d["prompts"]["calibration"]["images_per_prompt"] = d["prompts"]["training"]["images_per_prompt"] = 1
    d.update(ratio=0.34, max_ratio=0.34, steps={"1": {"prev": 0}})
    d["capture"].update(timesteps=2, image_tokens=8, text_tokens=16, dtype="bfloat16", shard_samples=4, chunk_samples=4)
    d["sandwich"].update(train_steps=2, batch_size=4, micro_batch=2, round_samples=8, holdout=0.25)
    params = parse_params(d)
    encoder = text.load_text_encoder(params.model, params.text)
    cal = encode_prompts(encoder, [f"a photo of object {i}" for i in range(4)], batch_size=4)
    train = encode_prompts(encoder, [f"a painting of scene {i}" for i in range(4)], batch_size=4)

    step = make_plan([2, 0, 1], 1, 3, params.sandwich.width)[0]
    assert (step.block, step.sandwich) == (2, (1, 2))
    capture_step(params, step, ChainState(), cal, train, "f02", tmp_path)
    store = StoreReader(tmp_path / "calibration.zarr")
    assert store.attrs["tokens"] == {"img": 16, "txt": 77 + 8} and store.attrs["kind"] == "final"
    assert StoreReader(tmp_path / "training.zarr").read("latents").shape == (4 * 2, 16, 16)  # 4 channels × 2×2
    sols, _ = solve_store(store, params.solve.ridge, params.solve.chunk_rows)
    assert set(sols) == {"img"}
    save_solution(tmp_path / "solve.safetensors", sols)
    state, record = train_sandwich(params, step, ChainState(), load_solution(tmp_path / "solve.safetensors"),
                                   StoreReader(tmp_path / "training.zarr"), train)
    assert record["lora_blocks"] == [1] and torch.isfinite(torch.tensor(record["holdout_loss_trained"]))
    states = [ChainState(), state]
    rec = assemble(params, states, 3, tmp_path / "pruned")
    assert rec["replaced_blocks"][0]["kind"] == "final" and rec["family"]["pipeline"] == "StableDiffusion3Pipeline"
    reloaded = load_pruned(tmp_path / "pruned" / "transformer")
    in_memory = pruned_model(params, states, 1)[0].model
    x = forward_inputs(params.sampling, in_memory, source.load_codec(params.model, in_memory), train, torch.device("cpu"))
    torch.testing.assert_close(call_model(reloaded, x), call_model(in_memory, x), rtol=0, atol=0)
