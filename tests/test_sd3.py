"""The SD3 family adapter (fastflux_core/sd3.py) against diffusers' own SD3Transformer2DModel.forward:
block-wise execution, packed-token I/O, the final block without text output, SD3.5's dual attention,
BRLL replacements, LoRA targets and the pruned model's save/load."""

import json

import pytest
import torch
from diffusers import SD3Transformer2DModel

from fastflux_core.blocks import ModelInputs
from fastflux_core.codec import latent_ids, pack
from fastflux_core.export import merge_lora, pruned_class, to_pruned
from fastflux_core.families import adapter_for, family_of_config
from fastflux_core.lora import inject_lora
from fastflux_core.pruned_flux import LinearReplacement, SkipBlock
from fastflux_core.sd3 import SD3Adapter

H, W = 8, 4  # latent cells: a non-square 4 × 2 token grid


def tiny_sd3(seed: int = 0, dual: tuple[int, ...] = (0, 1), qk_norm: str | None = "rms_norm") -> SD3Transformer2DModel:
    """4 joint blocks, the last without text output; SD3.5's dual attention in blocks ``dual``."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
                                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=24,
                                 caption_projection_dim=16, pooled_projection_dim=12, pos_embed_max_size=8,
                                 dual_attention_layers=dual, qk_norm=qk_norm).eval()


def _inputs(b: int = 2, seed: int = 1) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(hidden_states=torch.randn(b, (H // 2) * (W // 2), 16, generator=g),
                       encoder_hidden_states=torch.randn(b, 5, 24, generator=g),
                       pooled_projections=torch.randn(b, 12, generator=g), timestep=torch.tensor([0.3, 0.8][:b]),
                       img_ids=latent_ids(H, W), txt_ids=torch.zeros(5, 3))


def _theirs(model, x: ModelInputs, **kwargs) -> torch.Tensor:
    """The model's own forward on spatial latents, as StableDiffusion3Pipeline calls it, packed."""
    from fastflux_core.codec import unpack

    out = model(hidden_states=unpack(x.hidden_states, H, W), encoder_hidden_states=x.encoder_hidden_states,
                pooled_projections=x.pooled_projections, timestep=x.timestep * 1000, return_dict=False, **kwargs)[0]
    return pack(out)


@torch.no_grad()
def test_blocks_and_pieces_equal_the_models_forward():
    model = tiny_sd3()
    a = adapter_for(model)
    assert isinstance(a, SD3Adapter) and [b.kind for b in a.blocks] == ["joint"] * 3 + ["final"]
    assert [b.name for b in a.blocks] == ["j00", "j01", "j02", "f03"]
    x = _inputs()
    want = _theirs(model, x)
    torch.testing.assert_close(a.call(x), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.forward(x), want, rtol=1e-5, atol=1e-6)
    state = a.run(a.run(a.embed(x), 0, 2), 2)  # two ranges make the whole chain
    torch.testing.assert_close(a.head(state), want, rtol=1e-5, atol=1e-6)
    assert state.image_rotary_emb is None and not state.encoder_hidden_states.any()  # after the final block: zero text


@torch.no_grad()
@pytest.mark.parametrize("index", [1, 3])
def test_skip_is_diffusers_skip_layers(index):
    """Our identity stand-in removes a block exactly as SD3's own ``skip_layers`` does (also the final one)."""
    model = tiny_sd3()
    x = _inputs()
    want = _theirs(model, x, skip_layers=[index])
    a = adapter_for(model)
    a.skip(index)
    torch.testing.assert_close(a.forward(x), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.call(x), want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(want, _theirs(tiny_sd3(), x))


def _affine(rep: LinearReplacement, seed: int) -> LinearReplacement:
    g = torch.Generator().manual_seed(seed)
    for s in rep.streams:
        rep.set_affine(s, torch.randn(16, 16, generator=g) * 0.1, torch.randn(16, generator=g) * 0.1)
    return rep


@torch.no_grad()
def test_final_block_replacement_is_image_only_and_runs_in_the_models_forward():
    model = tiny_sd3()
    a = adapter_for(model)
    rep = _affine(LinearReplacement(16, "final"), 0)
    assert rep.streams == ("img",)
    enc, hid = rep(torch.ones(1, 2, 16), torch.ones(1, 3, 16))
    assert enc is None and hid.shape == (1, 2, 16)  # as the block: no text output
    a.swap(3, rep)
    a.swap(1, _affine(LinearReplacement(16, "joint"), 1))
    x = _inputs()
    torch.testing.assert_close(a.forward(x), a.call(x), rtol=1e-5, atol=1e-6)


def test_lora_targets_follow_each_blocks_modules():
    a = adapter_for(tiny_sd3())
    dual, plain, final = a.lora_targets(0), a.lora_targets(2), a.lora_targets(3)
    assert "attn2.to_q" in dual and "attn2.to_q" not in plain
    assert "ff_context.net.2" in plain and "attn.to_add_out" in plain
    assert "ff_context.net.2" not in final and "attn.to_add_out" not in final and "ff.net.2" in final
    assert not any(t.startswith("norm") for t in dual + plain + final)  # never the AdaLN modulation
    inject_lora(a, [0, 3], rank=2, alpha=2.0, seed=0)
    wrapped = {n.rsplit(".base_layer", 1)[0] for n, _ in a.model.named_modules() if n.endswith("base_layer")}
    assert wrapped == {f"transformer_blocks.0.{t}" for t in dual} | {f"transformer_blocks.3.{t}" for t in final}
    assert len(a.mlps()) == 3 * 2 + 1  # image and text MLP, but in the final block


@torch.no_grad()
@pytest.mark.parametrize("numbering", ["original", "contiguous"])
def test_pruned_sd3_saves_loads_and_refuses_the_plain_class(tmp_path, numbering):
    model = tiny_sd3()
    a = adapter_for(model)
    inject_lora(a, [2], rank=2, alpha=2.0, seed=0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.add_(0.05)
    a.swap(3, _affine(LinearReplacement(16, "final"), 2))
    a.skip(1)
    x = _inputs()
    want = a.forward(x)
    merge_lora(model)
    pruned = to_pruned(model, [3], [1])
    assert type(pruned).__name__ == "PrunedSD3Transformer2DModel"
    pruned.save_pretrained(str(tmp_path), numbering=numbering)
    config = json.loads((tmp_path / "config.json").read_text())
    cls = pruned_class(config)
    assert cls is type(pruned) and family_of_config(config) is SD3Adapter
    back = cls.from_pretrained(str(tmp_path))
    torch.testing.assert_close(adapter_for(back).forward(x), want, rtol=1e-5, atol=1e-5)
    assert isinstance(back.transformer_blocks[1], SkipBlock)
    if numbering == "original":
        with pytest.raises(Exception, match="fastflux-pruned"):
            SD3Transformer2DModel.from_pretrained(str(tmp_path))


def test_final_block_through_capture_solve_sandwich_and_export(tmp_path, monkeypatch):
    """Step 1 of a chain on a tiny SD3 base replaces the final block. Made exactly affine on the image
    stream, capture + least squares recover its linear from the store, with no text linear (the block
    has no text output, whose residual is stored as zero); Sandwich Training then trains it with LoRA
    on its one unpruned neighbour, and the chain model exports as a PrunedSD3Transformer2DModel."""
    from tiny import digit_captions, tiny_params, write_tiny_base

    from fastflux_core import capture as capture_mod
    from fastflux_core.solve import save_solution, solve_store
    from fastflux_core.chain import load_solution
    from fastflux_core.chain import ChainState, make_plan
    from fastflux_core.chain_model import build_chain_model
    from fastflux_core.sandwich import train_sandwich
    from fastflux_core.store import StoreReader

    write_tiny_base(tmp_path, family="sd3")
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{"capture.dtype": "float32", "sandwich.train_steps": 3})
    step = make_plan([4, 1, 3, 0, 2], 3, 5, params.sandwich.width)[0]
    assert (step.block, step.sandwich) == (4, (3, 4))
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(32, 32, generator=g) * 0.05, torch.randn(32, generator=g) * 0.1
    real = capture_mod.build_chain_model

    def affine_final(params, state, new_lora=()):
        adapter = real(params, state, new_lora)
        rep = LinearReplacement(32, "final")
        rep.set_affine("img", w, b)
        adapter.swap(4, rep)
        return adapter

    monkeypatch.setattr(capture_mod, "build_chain_model", affine_final)
    cal, train = digit_captions(name="calibration"), digit_captions(name="training")
    capture_mod.capture_step(params, step, ChainState(), cal, train, "f04", tmp_path / "c")
    store = StoreReader(tmp_path / "c" / "calibration.zarr")
    assert store.attrs["kind"] == "final" and not store.read("residual_txt").any()
    sols, metrics = solve_store(store, ridge=0.0, chunk_rows=100)
    assert set(sols) == {"img"} and metrics["img"]["relative_residual"] < 1e-4
    torch.testing.assert_close(sols["img"].weight.float(), w, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(sols["img"].bias.float(), b, rtol=1e-3, atol=1e-4)

    save_solution(tmp_path / "solve.safetensors", sols)
    state, record = train_sandwich(params, step, ChainState(), load_solution(tmp_path / "solve.safetensors"),
                                   StoreReader(tmp_path / "c" / "training.zarr"), train)
    assert record["lora_blocks"] == [3] and record["trainable_params"] > 32 * 33
    adapter = build_chain_model(params, state)
    assert isinstance(adapter.block(4), LinearReplacement) and adapter.block(4).streams == ("img",)
    merge_lora(adapter.model)
    x = ModelInputs(hidden_states=torch.randn(2, 16, 4), encoder_hidden_states=train.prompt_embeds[:2],
                    pooled_projections=train.pooled[:2], timestep=torch.tensor([0.2, 0.7]), img_ids=latent_ids(8, 8),
                    txt_ids=torch.zeros(train.prompt_embeds.shape[1], 3))
    with torch.no_grad():
        want = adapter.call(x)
        pruned = to_pruned(adapter.model, [4])
        pruned.save_pretrained(str(tmp_path / "pruned"))
        back = pruned_class(json.loads((tmp_path / "pruned" / "config.json").read_text())).from_pretrained(
            str(tmp_path / "pruned"))
        torch.testing.assert_close(adapter_for(back).call(x), want, rtol=1e-5, atol=1e-5)


def test_a_diffusers_format_lora_maps_onto_a_pruned_sd3_export(tmp_path):
    """``fastflux lora`` on an SD3 export: the replaced block's keys are dropped, the rest kept."""
    from safetensors.torch import save_file

    from fastflux_core.lora_compat import convert_file

    model = tiny_sd3()
    adapter_for(model).swap(1, LinearReplacement(16, "joint"))
    to_pruned(model, [1]).save_pretrained(str(tmp_path / "export" / "transformer"))
    lora = {}
    for i in (0, 1, 3):
        lora[f"transformer.transformer_blocks.{i}.attn.to_q.lora_A.weight"] = torch.ones(2, 16)
        lora[f"transformer.transformer_blocks.{i}.attn.to_q.lora_B.weight"] = torch.ones(16, 2)
    save_file(lora, str(tmp_path / "in.safetensors"))
    report = convert_file(tmp_path / "in.safetensors", tmp_path / "export", tmp_path / "out.safetensors")
    assert report["dropped_blocks"] == [1] and report["keys_out"] == 4 and abs(report["dropped_share"] - 1 / 3) < 1e-6
