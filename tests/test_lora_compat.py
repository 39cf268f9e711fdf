"""FLUX LoRAs in the three common key formats, mapped onto a pruned export (fastflux lora)."""

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastflux_core.errors import FastFluxError
from fastflux_core.export import PrunedFluxTransformer2DModel, to_pruned
from fastflux_core.export_folder import write_pipeline
from fastflux_core.flux import FluxAdapter
from fastflux_core.lora_compat import convert_file
from fastflux_core.pruned_flux import LinearReplacement

D, MLP, RANK = 32, 128, 4  # the tiny FLUX folder's transformer: width 32, 2 double + 3 single blocks
REPLACED = (1, 3)  # double block 1 and single block 1 (global 3)


def _pair(out: dict, module: str, d_in: int, d_out: int, g: torch.Generator, style: str) -> None:
    down, up = ("lora_A", "lora_B") if style == "AB" else ("lora_down", "lora_up")
    out[f"{module}.{down}.weight"] = torch.randn(RANK, d_in, generator=g)
    out[f"{module}.{up}.weight"] = torch.randn(d_out, RANK, generator=g) * 0.01
    if style == "down_up":
        out[f"{module}.alpha"] = torch.tensor(float(RANK) / 2)


def make_lora(fmt: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA on every block of the tiny model, in ``fmt``'s key names (what each trainer writes)."""
    g, out = torch.Generator().manual_seed(seed), {}
    for i in range(2):
        if fmt == "diffusers":
            for name, d_in, d_out in (("attn.to_q", D, D), ("attn.to_out.0", D, D), ("ff.net.0.proj", D, MLP)):
                _pair(out, f"transformer.transformer_blocks.{i}.{name}", d_in, d_out, g, "AB")
        elif fmt == "kohya":
            for name, d_in, d_out in (("img_attn_qkv", D, 3 * D), ("img_attn_proj", D, D), ("txt_attn_proj", D, D)):
                _pair(out, f"lora_unet_double_blocks_{i}_{name}", d_in, d_out, g, "down_up")
        else:
            for name, d_in, d_out in (("img_attn.qkv", D, 3 * D), ("img_attn.proj", D, D), ("txt_attn.proj", D, D)):
                _pair(out, f"diffusion_model.double_blocks.{i}.{name}", d_in, d_out, g, "down_up")
    for j in range(3):
        if fmt == "diffusers":
            for name, d_in, d_out in (("attn.to_q", D, D), ("proj_out", D + MLP, D)):
                _pair(out, f"transformer.single_transformer_blocks.{j}.{name}", d_in, d_out, g, "AB")
        elif fmt == "kohya":  # (linear1 is not used: diffusers' kohya reader assumes FLUX.1-dev's widths for it)
            _pair(out, f"lora_unet_single_blocks_{j}_linear2", D + MLP, D, g, "down_up")
        else:
            _pair(out, f"diffusion_model.single_blocks.{j}.linear2", D + MLP, D, g, "down_up")
    return out


@pytest.fixture(scope="module")
def pruned_pipeline(tmp_path_factory, tiny_flux_folder):
    from diffusers import FluxPipeline

    root = tmp_path_factory.mktemp("lora")
    m = FluxPipeline.from_pretrained(str(tiny_flux_folder)).transformer
    a = FluxAdapter(m)
    for i in REPLACED:
        a.swap(i, LinearReplacement(m.inner_dim, a.blocks[i].kind))
    to_pruned(m, list(REPLACED)).save_pretrained(str(root / "transformer"))
    (root / "export").mkdir()
    write_pipeline(root / "transformer", tiny_flux_folder, root / "export")
    return root / "export"


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _load_lora_warnings(export, lora_path) -> tuple[list[str], object]:
    from fastflux_core.export_folder import load_pipeline

    pipe = load_pipeline(export)
    handler = _Warnings()
    logging.getLogger("diffusers").addHandler(handler)
    try:
        pipe.load_lora_weights(str(lora_path))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    return [m for m in handler.messages if "unexpected keys" in m or "missing keys" in m], pipe


@pytest.mark.parametrize("fmt", ["diffusers", "kohya", "bfl"])
def test_replaced_blocks_keys_dropped_and_the_rest_loads_cleanly(fmt, pruned_pipeline, tmp_path):
    lora = make_lora(fmt)
    save_file(lora, tmp_path / "in.safetensors")
    report = convert_file(tmp_path / "in.safetensors", pruned_pipeline, tmp_path / "out.safetensors")
    out = load_file(tmp_path / "out.safetensors")
    assert report["format"] == fmt and report["dropped_blocks"] == list(REPLACED)
    assert set(report["dropped_keys"]) == set(lora) - set(out) and report["keys_out"] == len(out)
    assert all(("blocks.1." in k or "blocks_1_" in k) for k in report["dropped_keys"])  # double 1, single 1
    assert 0.05 < report["dropped_share"] < 0.95

    # the unconverted LoRA makes diffusers warn about the replaced blocks' keys; the converted one loads cleanly
    warned, _ = _load_lora_warnings(pruned_pipeline, tmp_path / "in.safetensors")
    assert warned, "the raw LoRA should not fit the pruned model"
    warned, pipe = _load_lora_warnings(pruned_pipeline, tmp_path / "out.safetensors")
    assert warned == []
    assert any("lora_A" in n for n, _ in pipe.transformer.named_parameters())


def test_dropped_share_is_the_update_norm_share(tmp_path, pruned_pipeline):
    """Share of Σ‖scale·up@down‖², checked against the dense products."""
    lora = make_lora("kohya", seed=3)
    save_file(lora, tmp_path / "in.safetensors")
    report = convert_file(tmp_path / "in.safetensors", pruned_pipeline, tmp_path / "out.safetensors")
    norms = {}
    for k in lora:
        if k.endswith(".lora_down.weight"):
            module = k.removesuffix(".lora_down.weight")
            delta = lora[module + ".lora_up.weight"] @ lora[k] * (lora[module + ".alpha"] / RANK)
            norms[module] = float(delta.double().pow(2).sum())
    dropped = sum(v for m, v in norms.items() if "blocks_1_" in m)
    assert report["dropped_share"] == pytest.approx(dropped / sum(norms.values()), rel=1e-9)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya", "bfl"])
def test_contiguous_numbering_renumbers_kept_blocks(fmt, pruned_pipeline, tmp_path):
    """For an export renumbered contiguously, kept blocks' keys get the new indices: single block 2 → 1."""
    PrunedFluxTransformer2DModel.from_pretrained(str(pruned_pipeline / "transformer")).save_pretrained(
        tmp_path / "contiguous", numbering="contiguous")
    save_file(make_lora(fmt), tmp_path / "in.safetensors")
    report = convert_file(tmp_path / "in.safetensors", tmp_path / "contiguous", tmp_path / "out.safetensors")
    assert report["numbering"] == "contiguous" and report["dropped_blocks"] == list(REPLACED)
    keys = set(load_file(tmp_path / "out.safetensors"))
    single = {"diffusers": "single_transformer_blocks.{}.", "kohya": "single_blocks_{}_", "bfl": "single_blocks.{}."}[fmt]
    assert any(single.format(1) in k for k in keys) and not any(single.format(2) in k for k in keys)
    if fmt == "diffusers":  # every adapted module exists in the renumbered weights
        with safe_open(tmp_path / "contiguous" / "diffusion_pytorch_model.safetensors", "pt") as f:
            weights = set(f.keys())
        assert all(k.removeprefix("transformer.").rsplit(".lora_", 1)[0] + ".weight" in weights for k in keys)


@pytest.mark.parametrize("keys, match", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 32)}, "another model family"),
    ({"some.random.key": (4, 32)}, "no known FLUX format"),
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 64),
      "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": (64, 4)}, "width 64"),
    ({"lora_unet_double_blocks_7_img_attn_proj.lora_down.weight": (4, 32)}, "double block 7"),
])
def test_bad_loras_fail_with_one_line_and_write_nothing(keys, match, pruned_pipeline, tmp_path):
    save_file({k: torch.zeros(s) for k, s in keys.items()}, tmp_path / "in.safetensors")
    with pytest.raises(FastFluxError, match=match):
        convert_file(tmp_path / "in.safetensors", pruned_pipeline, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_export_without_block_map_and_pickled_lora_are_refused(tmp_path, tiny_flux_folder, pruned_pipeline):
    save_file(make_lora("kohya"), tmp_path / "in.safetensors")
    with pytest.raises(FastFluxError, match="block map"):  # the base folder: a plain FLUX transformer
        convert_file(tmp_path / "in.safetensors", tiny_flux_folder, tmp_path / "out.safetensors")
    torch.save({"a": torch.zeros(1)}, tmp_path / "in.pt")
    with pytest.raises(FastFluxError, match="only .safetensors"):
        convert_file(tmp_path / "in.pt", pruned_pipeline, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_a_qwen_image_diffusers_lora_maps_onto_its_pruned_export(tiny_qwenimage_folder, tmp_path):
    """Qwen-Image (issue 31): a diffusers-format LoRA on every block and on an embedder; the replaced
    block's keys are dropped, the rest loads into the exported QwenImagePipeline without a warning."""
    from diffusers import QwenImagePipeline

    from fastflux_core.qwenimage import QwenImageAdapter

    m = QwenImagePipeline.from_pretrained(str(tiny_qwenimage_folder)).transformer
    a = QwenImageAdapter(m)
    a.swap(1, a.replacement(1))
    to_pruned(m, [1]).save_pretrained(str(tmp_path / "transformer"))
    (tmp_path / "export").mkdir()
    write_pipeline(tmp_path / "transformer", tiny_qwenimage_folder, tmp_path / "export")
    g, lora, d = torch.Generator().manual_seed(0), {}, m.inner_dim  # width 16, MLP 4 × 16
    for i in range(3):
        for name, d_in, d_out in (("attn.to_q", d, d), ("img_mlp.net.0.proj", d, 4 * d), ("txt_mlp.net.2", 4 * d, d)):
            _pair(lora, f"transformer.transformer_blocks.{i}.{name}", d_in, d_out, g, "AB")
    _pair(lora, "transformer.img_in", 16, d, g, "AB")
    save_file(lora, tmp_path / "in.safetensors")
    report = convert_file(tmp_path / "in.safetensors", tmp_path / "export", tmp_path / "out.safetensors")
    assert report["format"] == "diffusers" and report["dropped_blocks"] == [1]
    assert set(lora) - set(load_file(tmp_path / "out.safetensors")) == {k for k in lora if "blocks.1." in k}
    assert _load_lora_warnings(tmp_path / "export", tmp_path / "in.safetensors")[0]  # unconverted: it does not fit
    warned, pipe = _load_lora_warnings(tmp_path / "export", tmp_path / "out.safetensors")
    assert warned == [] and any("lora_A" in n for n, _ in pipe.transformer.named_parameters())
