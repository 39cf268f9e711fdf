"""Each family's layout (fastflux_core/layouts.py) says, from a config alone, what its adapter finds in a
model built from that config — and the stages that need only it import no diffusers."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate import init_empty_weights

from fastflux_core.families import ADAPTERS, adapter_for, family
from fastflux_core.layouts import LAYOUTS, embedded_transformer_config, layout_of_config
from fastflux_core.params import EmbeddedParams
from fastflux_core.published import REFERENCE_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


def built(config: dict):
    """The model a config describes, on the meta device (no weights)."""
    with init_empty_weights():
        return family(layout_of_config(config).family).model_class.from_config(
            {k: v for k, v in config.items() if not k.startswith("_")})


def configs() -> list[tuple[str, dict]]:
    """Every family's published config (FLUX.1-dev, FLUX.2-dev, SD3.5-large, Qwen-Image), the embedded
    bases, and an SD3 config as the tiny test folder writes it."""
    out = [(f"{name} published", REFERENCE_CONFIGS[name]["transformer"]) for name in LAYOUTS]
    out += [(f"embedded {f}", embedded_transformer_config(EmbeddedParams(family=f), 1, (384, 384))) for f in ("flux", "flux2", "sd3", "qwenimage")]
    out.append(("sd3 small", {"_class_name": "SD3Transformer2DModel", "num_layers": 3, "patch_size": 2, "in_channels": 4,
                              "attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 16,
                              "caption_projection_dim": 16, "pooled_projection_dim": 8, "out_channels": 4}))
    return out


@pytest.mark.parametrize("name,config", configs(), ids=[n for n, _ in configs()])
def test_a_layout_says_what_the_adapter_of_the_built_model_finds(name, config):
    model = built(config)
    adapter, lay = adapter_for(model), layout_of_config(config)
    assert lay.block_refs(config) == adapter.blocks and len(adapter.blocks) > 0
    assert lay.block_refs(dict(model.config)) == adapter.blocks  # the config diffusers writes back
    # the channels against the model's own input layer: FLUX reads packed tokens, SD3 patches itself
    if lay.family == "sd3":
        assert lay.latent_channels(config) == model.pos_embed.proj.in_channels
        assert lay.token_channels(config) == 4 * model.pos_embed.proj.in_channels
        assert [b.kind == "final" for b in lay.block_refs(config)] == [blk.context_pre_only for blk in model.transformer_blocks]
    else:  # FLUX, FLUX.2 (x_embedder) and Qwen-Image (img_in) read packed tokens
        embedder = model.img_in if lay.family == "qwenimage" else model.x_embedder
        assert lay.token_channels(config) == embedder.in_features == 4 * lay.latent_channels(config)
    assert issubclass(type(adapter), lay) and lay.model_class_name == type(model).__name__


def test_every_family_has_a_layout_whose_defaults_are_diffusers():
    """A config.json may leave out a key diffusers fills from its ``__init__`` defaults: the layout's
    defaults must be those."""
    assert set(LAYOUTS) == set(ADAPTERS)
    for name, lay in LAYOUTS.items():
        signature = inspect.signature(family(name).model_class.__init__).parameters
        assert lay.defaults == {k: signature[k].default for k in lay.defaults}, name
        assert lay.block_refs({}) == lay.block_refs({k: signature[k].default for k in lay.defaults})


def test_model_blocks_reads_the_folder_config_and_names_what_is_wrong(tmp_path, monkeypatch):
    from fastflux_core.errors import ModelFolderError
    from fastflux_core.layouts import SD3Layout, model_blocks
    from fastflux_core.params import ModelParams

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFolderError, match=r"embedded base model not found in data/base: run stage 'base' first"):
        model_blocks(ModelParams())
    folder = tmp_path / "sd3"
    (folder / "transformer").mkdir(parents=True)
    config = folder / "transformer" / "config.json"
    for written, want in (({"_class_name": "SD3Transformer2DModel", "num_layers": 3}, ["j00", "j01", "f02"]),
                          ({"_class_name": "SD3Transformer2DModel", "patch_size": 1}, "needs patch_size 2"),
                          ({"_class_name": "UNet2DConditionModel"}, "no block adapter for a transformer of class")):
        config.write_text(json.dumps(written))
        cfg = ModelParams.model_construct(source="sd3", path=folder)  # the folder's other files are preflight's
        if isinstance(want, list):
            assert [b.name for b in model_blocks(cfg)] == want == [b.name for b in SD3Layout.block_refs(written)]
        else:
            with pytest.raises(ModelFolderError, match=f"config.json: .*{want}"):
                model_blocks(cfg)


def test_a_pruned_exports_class_name_has_its_familys_layout():
    for lay in LAYOUTS.values():
        assert layout_of_config({"_class_name": lay.pruned_class}) is lay
    with pytest.raises(ValueError, match="no block adapter for a transformer of class 'UNet2DConditionModel'"):
        layout_of_config({"_class_name": "UNet2DConditionModel"})


def test_stages_validate_rank_and_plan_import_no_diffusers():
    """What these stages import before they start (their scripts' imports) holds no diffusers: each
    runs on every `dvc repro` (validate) or names the blocks (rank, plan) from config.json alone."""
    code = ("import sys\n"
            "for s in ('validate', 'rank', 'plan'):\n"
            "    src = open(f'stages/{s}.py').read().split('def main')[0]\n"
            "    exec(compile(src, s, 'exec'), {})\n"
            "from fastflux_core.params_file import read_params\n"  # and what validate's checks compute with
            "from fastflux_core.resources import check_blocks\n"
            "from fastflux_core.shapes import Shapes\n"
            "p = read_params('params.yaml')\n"
            "check_blocks(p)\n"
            "Shapes.of(p)\n"
            "print(sorted(m for m in ('diffusers', 'peft', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
