"""FLUX.1-dev's folder layout, loaded offline by the same code a real folder goes through."""

import json
import shutil

import numpy as np
import pytest
import yaml

from fastflux_core import preflight, source, text
from fastflux_core.errors import ModelFolderError
from fastflux_core.flux import FluxAdapter
from fastflux_core.params_file import parse_params
from fastflux_core.prompts import prompt_items
from fastflux_core.sampling import sample_latents
from fastflux_core.text import encode_prompts
from test_params import _default


def _flux_params(path):
    d = _default()
    d["model"] = {"source": "flux", "path": str(path), "dtype": "float32", "device": "cpu"}
    d["text"]["max_sequence_length"] = 16
    d["sampling"].update(height=16, width=16, steps=3, batch_size=2)
    d["capture"]["timesteps"] = 2
    return parse_params(d)


def test_load_encode_sample_decode(tiny_flux_folder):
    params = _flux_params(tiny_flux_folder)
    encoder = text.load_text_encoder(params.model, params.text)
    embeds = encode_prompts(encoder, ["a photo of a cat", "an oil painting of a lighthouse"], batch_size=1)
    assert embeds.prompt_embeds.shape == (2, 16, 32)  # T5 token states, padded to max_sequence_length
    assert embeds.pooled.shape == (2, 32)  # CLIP pooled output
    assert not np.allclose(embeds.pooled[0].numpy(), embeds.pooled[1].numpy())

    transformer = source.load_transformer(params.model)
    assert [b.kind for b in FluxAdapter(transformer).blocks] == ["double"] * 2 + ["single"] * 3
    codec = source.load_codec(params.model, transformer)
    assert (codec.latent_channels, codec.scale_factor) == (4, 2)
    latents = sample_latents(transformer, source.load_scheduler(params.model), embeds, prompt_items(2, 1, 0),
                             params.sampling, codec.latent_channels, codec.scale_factor, progress=False)
    images = codec.decode(latents)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    assert source.describe_folder_base(params.model)["blocks"] == 5


def test_missing_folder(tmp_path):
    params = _flux_params(tmp_path / "absent")
    with pytest.raises(ModelFolderError, match="does not exist"):
        source.load_transformer(params.model)


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="model_index.json"):
        preflight.check_model_folder(tmp_path, "flux")


def test_wrong_pipeline_class(tmp_path, tiny_flux_folder):
    bad = tmp_path / "sd"
    shutil.copytree(tiny_flux_folder, bad)
    index = json.loads((bad / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (bad / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="not a FLUX one"):
        preflight.check_model_folder(bad, "flux")


def test_missing_subfolder_and_pickled_weights(tmp_path, tiny_flux_folder):
    bad = tmp_path / "novae"
    shutil.copytree(tiny_flux_folder, bad)
    shutil.rmtree(bad / "vae")
    with pytest.raises(ModelFolderError, match="vae/"):
        preflight.check_model_folder(bad, "flux")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_flux_folder, pickled)
    for f in (pickled / "transformer").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelFolderError, match="safetensors"):
        preflight.check_model_folder(pickled, "flux")


def test_params_yaml_for_flux_round_trip(tiny_flux_folder):
    d = _default()
    d["model"] = {"source": "flux", "path": str(tiny_flux_folder)}
    assert parse_params(yaml.safe_load(yaml.safe_dump(d))).model.path == tiny_flux_folder


def test_sampler_equals_flux_pipeline_on_the_same_noise(tiny_flux_folder):
    """Our seeded sampler is FluxPipeline's loop: same schedule (mu shift), guidance, t/1000 — equal latents."""
    import torch
    from diffusers import FluxPipeline

    from fastflux_core.codec import pack
    from fastflux_core.sampling import initial_noise, latent_size

    params = _flux_params(tiny_flux_folder)
    pipe = FluxPipeline.from_pretrained(str(tiny_flux_folder))
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), ["a red cube", "a blue sphere"], batch_size=2)
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    ours = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    theirs = pipe(prompt_embeds=embeds.prompt_embeds, pooled_prompt_embeds=embeds.pooled,
                  latents=pack(initial_noise(items, codec.latent_channels, h, w)), height=params.sampling.height,
                  width=params.sampling.width, num_inference_steps=params.sampling.steps,
                  guidance_scale=params.sampling.guidance_scale, output_type="latent").images
    torch.testing.assert_close(pack(ours), theirs, rtol=1e-5, atol=1e-5)
