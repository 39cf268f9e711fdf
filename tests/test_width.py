"""The L1-norm width-pruning baseline (fastflux_core/width.py): the surgery cuts exactly the
lowest-L1 hidden units of every MLP (double and single blocks), hits the FLOPs it was asked for,
and torch-pruning's traced graph is still wrong for a FLUX single block (why the groups are given)."""

import copy

import torch
from tiny import tiny_transformer

from fastflux_core.blocks import ModelInputs
from fastflux_core.evaluation import call_model
from fastflux_core.families import adapter_for
from fastflux_core.speed import count_flops
from fastflux_core.width import prune_widths, unit_importance, width_share

B, N_IMG, N_TXT = 2, 16, 8


def _inputs(seed: int = 0) -> ModelInputs:
    g = torch.Generator().manual_seed(seed)
    return ModelInputs(hidden_states=torch.randn(B, N_IMG, 16, generator=g),
                       encoder_hidden_states=torch.randn(B, N_TXT, 32, generator=g),
                       pooled_projections=torch.randn(B, 32, generator=g), timestep=torch.full((B,), 0.5),
                       img_ids=torch.zeros(N_IMG, 3), txt_ids=torch.zeros(N_TXT, 3), guidance=torch.full((B,), 3.5))


def test_pruning_units_that_carry_nothing_leaves_the_output_unchanged():
    """Zero a quarter of every MLP's units (up row, bias, down column): they have the lowest L1 norm,
    so a 75 % cut removes exactly them — in double blocks' ff/ff_context and in single blocks, whose
    down-projection reads them after the attention output — and the output does not move."""
    model = tiny_transformer()
    adapter = adapter_for(model)
    mlps = adapter.mlps()
    assert len(mlps) == 2 * 2 + 3 and {m.offset for m in mlps} == {0, 32}
    dead = {}
    with torch.no_grad():
        for m in mlps:
            idx = torch.randperm(m.up.out_features, generator=torch.Generator().manual_seed(len(dead)))[:m.up.out_features // 4]
            m.up.weight[idx] = 0
            m.up.bias[idx] = 0
            m.down.weight[:, m.offset + idx] = 0
            dead[m.name] = idx
            assert set(torch.argsort(unit_importance(m))[:len(idx)].tolist()) == set(idx.tolist())
    x = _inputs()
    before = call_model(model, x)
    kept = prune_widths(adapter, 0.75, 8)
    assert set(kept.values()) == {96}
    for m in adapter_for(model).mlps():
        assert m.up.out_features == 96 and m.down.in_features == m.offset + 96
    torch.testing.assert_close(call_model(model, x), before, rtol=1e-5, atol=1e-6)


def test_width_pruning_meets_the_flops_target():
    x = _inputs()
    f_base = count_flops(lambda: call_model(tiny_transformer(), x))
    for target in (0.9, 0.8):
        model = tiny_transformer()
        share = width_share(model, x, target)
        prune_widths(adapter_for(model), share, round_to=1)
        ratio = count_flops(lambda: call_model(model, x)) / f_base
        assert abs(ratio - target) < 0.01, (ratio, target)


def test_torch_pruning_traced_graph_ties_a_single_blocks_mlp_to_its_attention():
    """If this starts failing, torch-pruning traces FLUX's single block correctly: its automatic
    groups could then replace :meth:`FluxAdapter.mlps`."""
    import torch_pruning as tp

    model = copy.deepcopy(tiny_transformer())
    x = _inputs()
    kwargs = {"hidden_states": x.hidden_states, "encoder_hidden_states": x.encoder_hidden_states,
              "pooled_projections": x.pooled_projections, "timestep": x.timestep, "img_ids": x.img_ids,
              "txt_ids": x.txt_ids, "guidance": x.guidance, "return_dict": False}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=kwargs, output_transform=lambda out: out[0])
    block = model.single_transformer_blocks[0]
    group = graph.get_pruning_group(block.proj_mlp, tp.prune_linear_out_channels, idxs=[0, 1])
    touched = {dep.target.module for dep, _ in group}
    assert block.attn.to_q in touched or block.attn.to_k in touched


def test_a_latency_match_that_rounds_to_the_flops_matchs_widths_reuses_that_model(monkeypatch, tmp_path):
    """The L1 model matched on latency keeps its own widths; where they round to the FLOPs-matched
    model's (the same units kept, the same seeds and budget), that model's record, per-image readings
    and grid column are reused, not trained again — and where they differ, a second model is built."""
    from types import SimpleNamespace as NS

    import fastflux_core.width as width

    built = []

    def fake_l1_model(params, ev, states, n, inputs, split, target, items_out):
        built.append(target)
        items_out.write_text(f"items of {target}")
        return ({"fid": target, "flops_ratio": target, "target_flops_ratio": target, "untuned": {"fid": 9.0}},
                {"latency_ratio": target}, f"img{target}")

    ev = NS(quality_of=lambda model, items_out=None: ({"fid": 1.0}, "ours", ["p"]),
            speed_of=lambda model: ({"flops_ratio": 0.9, "model": "d"}, {"latency_ratio": 0.9, "latency_ratio_iqr": 0.0,
                                                                          "model": "d"}),
            reference_dir=tmp_path)
    monkeypatch.setattr(width, "finished_model", lambda *a: (NS(model=None),))
    monkeypatch.setattr(width, "load_reference_images", lambda d: "full")
    grids = []
    monkeypatch.setattr(width, "comparison_grid", lambda columns, prompts, rows: grids.append(columns) or NS(save=lambda p: None))
    monkeypatch.setattr(width, "l1_model", fake_l1_model)
    params = NS(baseline=NS(latency_flops_cut=1.2, round_to=8), evaluate=NS(grid_rows=1))
    for widths, trained in (({0.9: (64,), 0.88: (64,)}, [0.9]), ({0.9: (64,), 0.88: (56,)}, [0.9, 0.88])):
        built.clear()
        monkeypatch.setattr(width, "l1_widths", lambda ev, target, round_to: widths[round(target, 6)])
        metrics, timings = width.compare_at(params, ev, [], 1, None, None, tmp_path)
        assert built == trained
        assert metrics["l1_latency"]["matched_on"] == "latency" and metrics["l1"]["matched_on"] == "flops"
        assert metrics["l1_latency"]["target_flops_ratio"] == 0.88
        assert metrics["l1_latency"]["fid"] == trained[-1] and timings["l1_latency"]["latency_ratio"] == trained[-1]
        assert ("same_model_as" in metrics["l1_latency"]) == (len(trained) == 1)
        # the report's interval over prompts opens each model's items; the grid shows each match
        assert (tmp_path / "items_n1_l1_latency.safetensors").read_text() == f"items of {trained[-1]}"
        assert grids[-1]["L1 (latency)"] == f"img{trained[-1]}" and grids[-1]["L1"] == "img0.9"
