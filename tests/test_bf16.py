"""bfloat16 end to end: the chain trains fp32 master copies inside a bf16 model, and the export
reloads as the bf16 model it was built as (no silent float32 upcast)."""

import torch
from tiny import digit_captions, tiny_params, tiny_transformer, write_tiny_base

from fastflux_core.assemble import assemble, pruned_model
from fastflux_core.capture import capture_step
from fastflux_core.chain import ChainState, make_plan
from fastflux_core.export import PrunedFluxTransformer2DModel, load_pruned, to_pruned
from fastflux_core.flux import FluxAdapter
from fastflux_core.pruned_flux import LinearReplacement
from fastflux_core.sandwich import prepare_sandwich, train_sandwich
from fastflux_core.solve import solve_store
from fastflux_core.store import StoreReader
from test_adapter import _inputs, _model_forward


@torch.no_grad()
def test_bf16_export_reloads_in_bf16_with_the_same_outputs(tmp_path):
    m = tiny_transformer(0).to(torch.bfloat16)
    a = FluxAdapter(m)
    rep = LinearReplacement(m.inner_dim, "single").to(torch.bfloat16)
    rep.set_affine("joint", torch.randn(m.inner_dim, m.inner_dim) * 0.05, torch.randn(m.inner_dim) * 0.05)
    a.swap(3, rep)
    x = _inputs()
    x = type(x)(**{k: v.to(torch.bfloat16) if torch.is_tensor(v := getattr(x, k)) else v for k in x.__dataclass_fields__})
    before = _model_forward(m, x)
    to_pruned(m, [3]).save_pretrained(str(tmp_path), safe_serialization=True)
    loaded = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path))  # no dtype given
    assert next(loaded.parameters()).dtype == torch.bfloat16 and loaded.config.weights_dtype == "bfloat16"
    assert torch.equal(_model_forward(loaded, x), before)
    as_fp32 = PrunedFluxTransformer2DModel.from_pretrained(str(tmp_path), dtype=torch.float32)  # an explicit dtype wins
    assert next(as_fp32.parameters()).dtype == torch.float32


def test_bf16_chain_capture_solve_sandwich_assemble_reload(tmp_path, monkeypatch):
    write_tiny_base(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = tiny_params(**{"model.dtype": "bfloat16", "capture.dtype": "bfloat16", "sandwich.train_steps": 5})
    step = make_plan([3, 1, 4, 0, 2], 1, 5, params.sandwich.width)[0]
    train = digit_captions(name="train")
    capture_step(params, step, ChainState(), digit_captions(name="cal"), train, "s01", tmp_path)
    sols, _ = solve_store(StoreReader(tmp_path / "calibration.zarr"), params.solve.ridge, 64)
    solved = {s: (v.weight.float(), v.bias.float()) for s, v in sols.items()}
    adapter, trainable, target = prepare_sandwich(params, step, ChainState(), solved)
    assert next(adapter.model.transformer_blocks.parameters()).dtype == torch.bfloat16  # frozen model stays bf16
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # master copies
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for b in target for p in b.parameters())
    state, record = train_sandwich(params, step, ChainState(), solved, StoreReader(tmp_path / "training.zarr"), train)
    assert all(t.dtype == torch.float32 for t in state.linears[3]["joint"])
    assert 0 < record["holdout_loss_trained"] < float("inf")
    states = [ChainState(), state]
    record = assemble(params.model_copy(update={"ratio": 0.2}), states, 5, tmp_path / "export")
    assert record["n_pruned"] == 1
    loaded = load_pruned(tmp_path / "export" / "transformer")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    in_memory = pruned_model(params, states, 1)[0].model
    x = {"hidden_states": torch.randn(1, 16, 4), "encoder_hidden_states": torch.randn(1, 8, 384),
         "pooled_projections": torch.randn(1, 384), "timestep": torch.tensor([0.5]), "img_ids": torch.zeros(16, 3),
         "txt_ids": torch.zeros(8, 3)}
    x = {k: v.to(torch.bfloat16) for k, v in x.items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**x, return_dict=False)[0], in_memory(**x, return_dict=False)[0])
