"""A Qwen-Image folder (model.source: qwenimage) through the code a real Qwen-Image folder goes through:
its Qwen2.5-VL encoder (padded prompts), our sampler with true classifier-free guidance against
QwenImagePipeline's, our decoder against the pipeline's (the 3-D VAE's latents_mean/std), an export
QwenImagePipeline loads, and the chain's stages in bfloat16 with padding kept out of least squares
and the sandwich's loss (issue 31)."""

import json

import numpy as np
import pytest
import torch
from diffusers import QwenImagePipeline
from test_params import _default
from tiny import with_random_linears, write_export

from fastflux_core import preflight, source, text
from fastflux_core.codec import pack
from fastflux_core.errors import ModelFolderError
from fastflux_core.export_folder import load_pipeline
from fastflux_core.families import adapter_for
from fastflux_core.params_file import parse_params
from fastflux_core.prompts import prompt_items
from fastflux_core.qwenimage import text_mask
from fastflux_core.sampling import initial_noise, latent_size, sample_latents
from fastflux_core.text import encode_prompts

PROMPTS = ["a red cube", "a lighthouse on a rocky coast at night"]  # 35 and 40 tokens in the tiny template


def _qwen_params(path, dtype="float32", **sampling):
    d = _default()
    d["model"] = {"source": "qwenimage", "path": str(path), "dtype": dtype, "device": "cpu"}
    d["text"]["max_sequence_length"] = 48
    d["sampling"].update(height=16, width=24, steps=3, batch_size=2, guidance_scale=1.0, **sampling)
    d["capture"]["timesteps"] = 2
    return parse_params(d)


def _theirs(pipe, params, prompts, items, codec, output_type="latent", **kwargs):
    """The pipeline on our noise, encoding the prompts itself (padded to the batch's longest, the mask
    beside). Its "latent" output is the packed (b, N_img, 4C) latent."""
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    s = params.sampling
    return pipe(prompt=prompts, latents=pack(initial_noise(items, codec.latent_channels, h, w)), height=s.height,
                width=s.width, num_inference_steps=s.steps, true_cfg_scale=s.true_cfg_scale,
                negative_prompt=s.negative_prompt if s.cfg else None, max_sequence_length=params.text.max_sequence_length,
                output_type=output_type, **kwargs).images


def test_load_encode_sample_decode(tiny_qwenimage_folder):
    params = _qwen_params(tiny_qwenimage_folder)
    encoder = text.load_text_encoder(params.model, params.text)
    embeds = encode_prompts(encoder, PROMPTS, batch_size=1)
    assert embeds.prompt_embeds.shape == (2, 48, 12) and embeds.pooled.shape == (2, 0)
    # each prompt's tokens after the template's system turn, as the cut check counts them; then zeros
    assert text_mask(embeds.prompt_embeds).sum(1).tolist() == [len(encoder.cut_tokenizer(p)["input_ids"])
                                                                for p in PROMPTS] == [35, 40]
    transformer = source.load_transformer(params.model)
    assert [b.kind for b in adapter_for(transformer).blocks] == ["double"] * 3
    codec = source.load_codec(params.model, transformer)
    assert (type(codec).__name__, codec.latent_channels, codec.scale_factor) == ("QwenImageVaeCodec", 4, 2)
    latents = sample_latents(transformer, source.load_scheduler(params.model), embeds, prompt_items(2, 1, 0),
                             params.sampling, codec.latent_channels, codec.scale_factor, progress=False)
    assert latents.shape == (2, 4, 8, 12) and codec.decode(latents).shape == (2, 16, 24, 3)
    assert source.describe_folder_base(params.model) == {"source": "qwenimage", "blocks": 3, "double_blocks": 3,
                                                         "path": str(tiny_qwenimage_folder.resolve())}


@torch.no_grad()
@pytest.mark.parametrize("cfg", [4.0, 1.0])
def test_sampler_and_decoder_equal_the_pipeline_on_the_same_noise(tiny_qwenimage_folder, cfg):
    """Our seeded sampler is QwenImagePipeline's loop — its schedule, its true CFG with the per-token
    norm rescale (at its default 4.0, negative prompt " "), prompts padded to text.max_sequence_length
    where the pipeline pads to the batch's longest — equal latents; and our decoder its decoder."""
    params = _qwen_params(tiny_qwenimage_folder, true_cfg_scale=cfg, negative_prompt=" ")
    pipe = QwenImagePipeline.from_pretrained(str(tiny_qwenimage_folder))
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), PROMPTS, batch_size=2,
                            negative_prompt=params.sampling.negative if cfg > 1 else None)
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    ours = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    torch.testing.assert_close(pack(ours), _theirs(pipe, params, PROMPTS, items, codec), rtol=1e-5, atol=1e-5)
    images = _theirs(pipe, params, PROMPTS, items, codec, output_type="np")  # (2, 16, 24, 3) in [0, 1]
    assert np.abs(codec.decode(ours).astype(float) - images * 255).max() <= 1.0


def test_a_qwen_image_folder_is_no_other_family_and_an_editing_one_is_refused(tiny_flux_folder, tiny_qwenimage_folder,
                                                                              tmp_path):
    with pytest.raises(ModelFolderError, match="not a Qwen-Image one"):
        preflight.check_model_folder(tiny_flux_folder, "qwenimage")
    with pytest.raises(ModelFolderError, match=r"not a FLUX one \(model.source: flux\): set model.source: qwenimage$"):
        preflight.check_model_folder(tiny_qwenimage_folder, "flux")
    edit = tmp_path / "edit"
    edit.mkdir()
    index = json.loads((tiny_qwenimage_folder / "model_index.json").read_text())
    (edit / "model_index.json").write_text(json.dumps({**index, "_class_name": "QwenImageEditPipeline"}))
    with pytest.raises(ModelFolderError, match="describes a QwenImageEditPipeline pipeline, not a Qwen-Image one"):
        preflight.check_model_folder(edit, "qwenimage")


@torch.no_grad()
def test_export_loads_in_the_pipeline_and_samples_the_same(tiny_qwenimage_folder, tmp_path):
    """A pruned Qwen-Image (blocks 1 and 2 replaced by BRLL linears) exported beside the base's
    components: QwenImagePipeline loads it with remote code, FastFLUX's loader without, and both
    sample what the in-memory model samples (guided)."""
    params = _qwen_params(tiny_qwenimage_folder, true_cfg_scale=4.0, negative_prompt=" ")
    model = with_random_linears(source.load_transformer(params.model), [1, 2])
    out, linked = write_export(model, [1, 2], tiny_qwenimage_folder, tmp_path)
    assert {"text_encoder", "tokenizer", "vae", "scheduler"} <= set(linked)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImagePipeline"
    assert index["transformer"] == ["pruned_flux", "PrunedQwenImageTransformer2DModel"]
    pipe = QwenImagePipeline.from_pretrained(str(out), trust_remote_code=True)
    assert pipe.transformer.config.replaced_blocks == [1, 2]
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), PROMPTS, batch_size=2,
                            negative_prompt=params.sampling.negative)
    items, codec = prompt_items(2, 1, 3), source.load_codec(params.model, model)
    ours = sample_latents(model, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    for loaded in (pipe, load_pipeline(out)):
        torch.testing.assert_close(_theirs(loaded, params, PROMPTS, items, codec), pack(ours), rtol=1e-5, atol=1e-5)
    base = sample_latents(source.load_transformer(params.model), source.load_scheduler(params.model), embeds, items,
                          params.sampling, codec.latent_channels, codec.scale_factor, progress=False)
    assert not np.allclose(ours.numpy(), base.numpy())  # the replacements change the images


def test_capture_solve_sandwich_assemble_reload_on_a_qwen_image_folder_in_bf16(tiny_qwenimage_folder, tmp_path,
                                                                             monkeypatch):
    """``model.source: qwenimage`` in bfloat16 through the chain's stages (their library calls), guided:
    capture records the conditional and unconditional calls, its text rows only unpadded tokens; the
    block is replaced, LoRA trains on its neighbours with padding out of the loss, the model is
    assembled, reloaded and computes what the chain model computes."""
    from fastflux_core.assemble import assemble, pruned_model
    from fastflux_core.capture import capture_step
    from fastflux_core.chain import ChainState, load_solution, make_plan
    from fastflux_core.evaluation import call_model, forward_inputs
    from fastflux_core.export import load_pruned
    from fastflux_core.sandwich import train_sandwich
    from fastflux_core.solve import save_solution, solve_store
    from fastflux_core.store import StoreReader

    monkeypatch.chdir(tmp_path)
    d = _default()
    d["model"] = {"source": "qwenimage", "path": str(tiny_qwenimage_folder), "dtype": "bfloat16", "device": "cpu"}
    d["text"]["max_sequence_length"] = 48
    d["sampling"].update(height=16, width=16, steps=2, batch_size=4, guidance_scale=1.0, true_cfg_scale=4.0,
                         negative_prompt=" ")
    d["importance"]["blocks"] = [0, 1, 2]
    d["prompts"]["calibration"]["images_per_prompt"] = d["prompts"]["training"]["images_per_prompt"] = 1
    d.update(ratio=0.34, max_ratio=0.34, steps={"1": {"prev": 0}})
    d["capture"].update(timesteps=2, image_tokens=8, text_tokens=40, shard_samples=4, chunk_samples=4)
    d["sandwich"].update(train_steps=2, batch_size=4, micro_batch=2, round_samples=16, holdout=0.25)
    d["baseline"]["ratios"] = []
    params = parse_params(d)
    encoder = text.load_text_encoder(params.model, params.text)
    cal = encode_prompts(encoder, [f"a photo of object {i}" for i in range(3)] + [PROMPTS[1]], batch_size=4,
                         dtype=torch.bfloat16, negative_prompt=" ")
    train = encode_prompts(encoder, [f"a painting of scene {i}" for i in range(4)], batch_size=4,
                           dtype=torch.bfloat16, negative_prompt=" ")
    assert text_mask(cal.prompt_embeds) is not None  # padded prompts: the mask is in play

    step = make_plan([1, 0, 2], 1, 3, params.sandwich.width)[0]
    assert (step.block, step.sandwich) == (1, (0, 2))
    capture_step(params, step, ChainState(), cal, train, "d01", tmp_path)
    store = StoreReader(tmp_path / "calibration.zarr")
    assert store.attrs["kind"] == "double" and int(store.array("negative")[:].sum()) == 8  # 4 items × 2 steps
    sols, _ = solve_store(store, params.solve.ridge, params.solve.chunk_rows)
    assert set(sols) == {"img", "txt"}
    save_solution(tmp_path / "solve.safetensors", sols)
    state, record = train_sandwich(params, step, ChainState(), load_solution(tmp_path / "solve.safetensors"),
                                   StoreReader(tmp_path / "training.zarr"), train)
    assert record["lora_blocks"] == [0, 2] and np.isfinite(record["holdout_loss_trained"])
    states = [ChainState(), state]
    rec = assemble(params, states, 3, tmp_path / "pruned")
    assert rec["family"] == {"name": "qwenimage", "pipeline": "QwenImagePipeline",
                             "transformer": "QwenImageTransformer2DModel", "pruned": "PrunedQwenImageTransformer2DModel"}
    reloaded = load_pruned(tmp_path / "pruned" / "transformer")
    in_memory = pruned_model(params, states, 1)[0].model
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    x = forward_inputs(params.sampling, in_memory, source.load_codec(params.model, in_memory), train, torch.device("cpu"))
    torch.testing.assert_close(call_model(reloaded, x), call_model(in_memory, x), rtol=0, atol=0)
