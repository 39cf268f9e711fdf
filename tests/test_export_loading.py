"""Loading the export: as a pipeline folder, without FastFLUX (diffusers' remote code), never silently
as the plain FLUX class."""

import json
import sys

import pytest
import torch
from test_adapter import _inputs, _model_forward
from test_export import _chain_like_model
from test_flux_folder import _flux_params

from fastflux_core import source, text
from fastflux_core.export import PrunedFluxTransformer2DModel, merge_lora, to_pruned
from fastflux_core.export_folder import link_target, load_pipeline, transformer_entry, write_pipeline
from fastflux_core.flux import FluxAdapter
from fastflux_core.prompts import prompt_items
from fastflux_core.pruned_flux import MODULE_FILE, LinearReplacement
from fastflux_core.text import encode_prompts


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A saved pruned tiny transformer (two linears, merged LoRA) and its forward on fixed inputs."""
    folder = tmp_path_factory.mktemp("export") / "transformer"
    m = _chain_like_model()
    merge_lora(m)
    pruned = to_pruned(m, [1, 2])
    pruned.save_pretrained(str(folder))
    with torch.no_grad():
        out = _model_forward(pruned, _inputs())
    return folder, out


def test_plain_flux_class_refuses_and_names_the_class(export):
    from diffusers import FluxTransformer2DModel

    folder, _ = export
    with pytest.raises(ValueError, match="PrunedFluxTransformer2DModel") as err:
        FluxTransformer2DModel.from_pretrained(str(folder))
    assert "trust_remote_code=True" in str(err.value)


@torch.no_grad()
def test_our_class_loads_and_resaves_with_the_guard(export, tmp_path):
    folder, out = export
    loaded = PrunedFluxTransformer2DModel.from_pretrained(str(folder))
    assert "quantization_config" not in loaded.config and "auto_map" not in loaded.config
    torch.testing.assert_close(_model_forward(loaded, _inputs()), out, rtol=0, atol=0)
    loaded.save_pretrained(str(tmp_path))  # a re-saved export still refuses the plain class
    config = json.loads((tmp_path / "config.json").read_text())
    assert "fastflux-pruned" in config["quantization_config"]["quant_method"]
    assert config["auto_map"] == {"AutoModel": "pruned_flux.PrunedFluxTransformer2DModel"}
    assert (tmp_path / "pruned_flux.py").read_bytes() == (folder / "pruned_flux.py").read_bytes()


@torch.no_grad()
def test_loads_where_fastflux_cannot_be_imported(export, monkeypatch):
    """diffusers' AutoModel runs the pruned_flux.py shipped in the folder, and gets the same output, while
    any import of our package raises (in this process, with fastflux_core hidden from sys.modules)."""
    from diffusers import AutoModel

    folder, out = export
    for name in [n for n in sys.modules if n.split(".")[0] in ("fastflux_core", "diffusers_modules")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastflux_core", None)  # `import fastflux_core…` now fails
    m = AutoModel.from_pretrained(str(folder), trust_remote_code=True)
    assert type(m).__module__.startswith("diffusers_modules"), type(m).__module__
    monkeypatch.undo()  # our package back before comparing
    torch.testing.assert_close(_model_forward(m, _inputs()), out, rtol=0, atol=0)


@torch.no_grad()
def test_pipeline_folder_generates_like_our_sampler(tmp_path, tiny_flux_folder):
    """FluxPipeline and DiffusionPipeline load the export folder (transformer linked, the rest linked
    to the base); generating from prompts equals our sampler with the pruned transformer on the same noise."""
    from diffusers import DiffusionPipeline, FluxPipeline

    from fastflux_core.codec import pack
    from fastflux_core.sampling import initial_noise, latent_size, sample_latents

    m = FluxPipeline.from_pretrained(str(tiny_flux_folder)).transformer
    rep = LinearReplacement(m.inner_dim, "single")
    g = torch.Generator().manual_seed(0)
    rep.set_affine("joint", torch.randn(m.inner_dim, m.inner_dim, generator=g) * 0.05, torch.randn(m.inner_dim, generator=g) * 0.05)
    FluxAdapter(m).swap(3, rep)
    to_pruned(m, [3]).save_pretrained(str(tmp_path / "assemble" / "transformer"))
    out = tmp_path / "export"
    out.mkdir()
    linked = write_pipeline(tmp_path / "assemble" / "transformer", tiny_flux_folder, out)
    assert sorted(linked) == sorted(["transformer", "scheduler", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"])
    assert all((out / c).is_symlink() for c in linked)  # nothing copied

    index = json.loads((out / "model_index.json").read_text())
    assert index["transformer"] == transformer_entry(out / "transformer") == [MODULE_FILE.removesuffix(".py"), PrunedFluxTransformer2DModel.__name__]
    pipe = FluxPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert type(pipe.transformer).__name__ == "PrunedFluxTransformer2DModel" and pipe.transformer.config.replaced_blocks == [3]
    assert type(DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)).__name__ == "FluxPipeline"
    ours_pipe = load_pipeline(out)
    assert type(ours_pipe.transformer) is PrunedFluxTransformer2DModel

    params = _flux_params(tiny_flux_folder)
    prompts = ["a red cube", "a blue sphere"]
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    s = params.sampling
    theirs = pipe(prompt=prompts, latents=pack(initial_noise(items, codec.latent_channels, h, w)), height=s.height,
                  width=s.width, num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                  max_sequence_length=params.text.max_sequence_length, output_type="latent").images
    embeds = encode_prompts(text.load_text_encoder(params.model, params.text), prompts, batch_size=2)
    ours = sample_latents(ours_pipe.transformer, source.load_scheduler(params.model), embeds, items, s,
                          codec.latent_channels, codec.scale_factor, progress=False)
    torch.testing.assert_close(pack(ours), theirs, rtol=1e-5, atol=1e-5)
    base = sample_latents(FluxPipeline.from_pretrained(str(tiny_flux_folder)).transformer, source.load_scheduler(params.model),
                          embeds, items, s, codec.latent_channels, codec.scale_factor, progress=False)
    assert not torch.allclose(base, ours)  # the pruned transformer is the one that ran


@torch.no_grad()
def test_contiguous_numbering_round_trips(export, tmp_path):
    """Kept blocks renumbered 0, 1, … (standard keys a block-counting runtime reads), replaced linears in
    their own file; our class renumbers back and computes the same function."""
    from safetensors import safe_open

    folder, out = export
    PrunedFluxTransformer2DModel.from_pretrained(str(folder)).save_pretrained(tmp_path, numbering="contiguous")
    config = json.loads((tmp_path / "config.json").read_text())  # tiny: 2 double + 3 single, 1 and 2 replaced
    assert (config["num_layers"], config["num_single_layers"], config["numbering"]) == (1, 2, "contiguous")
    with safe_open(tmp_path / "diffusion_pytorch_model.safetensors", "pt") as f:
        blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in f.keys() if "blocks." in k}
    assert blocks == {"transformer_blocks.0", "single_transformer_blocks.0", "single_transformer_blocks.1"}
    with safe_open(tmp_path / "replaced_blocks.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["1.img.bias", "1.img.weight", "1.txt.bias", "1.txt.weight", "2.joint.bias", "2.joint.weight"]
    loaded = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path))
    assert loaded.config.replaced_blocks == [1, 2] and len(loaded.single_transformer_blocks) == 3
    torch.testing.assert_close(_model_forward(loaded, _inputs()), out, rtol=0, atol=0)
    from diffusers import FluxTransformer2DModel

    with pytest.raises(ValueError, match="PrunedFluxTransformer2DModel"):
        FluxTransformer2DModel.from_pretrained(str(tmp_path))


def test_export_folder_of_a_base_without_pipeline_index_and_contiguous(export, tmp_path):
    """The embedded default's base (transformer/ and scheduler/, no model_index.json): links, no index;
    numbering contiguous makes transformer/ a renumbered copy, and the map says where each kept block went."""
    from fastflux_core.export_folder import contiguous_map

    folder, _ = export
    base = tmp_path / "base"
    (base / "scheduler").mkdir(parents=True)
    (base / "scheduler" / "scheduler_config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    assert write_pipeline(folder, base, out, numbering="contiguous") == ["transformer", "scheduler"]
    assert not (out / "model_index.json").exists() and (out / "scheduler").is_symlink()
    assert not (out / "transformer").is_symlink() and (out / "transformer" / "replaced_blocks.safetensors").is_file()
    assert contiguous_map(folder) == {"double": {"0": 0}, "single": {"1": 0, "2": 1}}  # global 3, 4 → 0, 1


def test_a_model_converted_to_bfloat16_saves_and_reloads_as_bfloat16_with_ordinary_file_modes(export, tmp_path):
    """Issue 30 (4, 6): after ``.to(torch.bfloat16)`` the saved config kept ``weights_dtype: float32``, so
    a reload without a dtype silently gave float32; the weights file was written 0600, the rest 0644."""
    import os

    folder, _ = export
    model = PrunedFluxTransformer2DModel.from_pretrained(str(folder)).to(torch.bfloat16)
    model.save_pretrained(str(tmp_path / "bf16"))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["weights_dtype"] == "bfloat16"
    assert next(PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path / "bf16")).parameters()).dtype == torch.bfloat16
    mask = os.umask(0)
    os.umask(mask)
    assert {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "bf16").iterdir()} == {
        f.name: 0o666 & ~mask for f in (tmp_path / "bf16").iterdir()}


def test_the_export_links_the_projects_own_base_relatively_and_survives_a_move(export, tmp_path, monkeypatch):
    """Issue 30 (5): every component link was absolute, into the project that made it; a moved or copied
    project pointed at the old tree. Inside the project the links are relative now; a model folder
    outside it stays absolute; a broken link or a folder without a transformer is one clear error."""
    import os
    import shutil

    from fastflux_core.errors import ModelFolderError

    folder, _ = export
    project = tmp_path / "project"
    shutil.copytree(folder, project / "data" / "assemble" / "transformer")
    (project / "data" / "base" / "scheduler").mkdir(parents=True)
    (project / "data" / "base" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"}))
    outside = tmp_path / "models" / "vae"
    outside.mkdir(parents=True)
    (outside / "config.json").write_text("{}")
    monkeypatch.chdir(project)
    out = project / "data" / "export"
    out.mkdir()
    write_pipeline(project / "data" / "assemble" / "transformer", project / "data" / "base", out)
    assert os.readlink(out / "scheduler") == "../base/scheduler"
    assert link_target(outside, out) == str(outside.resolve())  # a model folder outside the project
    os.symlink(link_target(outside, out), out / "vae")
    moved = tmp_path / "moved"
    shutil.move(str(project), moved)
    monkeypatch.chdir(moved)
    export_dir = moved / "data" / "export"
    assert (export_dir / "scheduler" / "scheduler_config.json").is_file() and (export_dir / "transformer" / "config.json").is_file()
    shutil.rmtree(tmp_path / "models")
    with pytest.raises(ModelFolderError, match=r"vae links to .*models/vae, which does not exist"):
        load_pipeline(export_dir)
    (export_dir / "vae").unlink()
    shutil.rmtree(moved / "data" / "assemble")
    with pytest.raises(ModelFolderError, match=r"not an exported pipeline: .*transformer/config.json is missing"):
        load_pipeline(export_dir)
