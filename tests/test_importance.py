"""Eq. 2, replacement orders, the proxy, and ranking records."""

import numpy as np
import pytest
import torch
from tiny import tiny_transformer

from fastflux_core.ablation import latent_error
from fastflux_core.errors import FastFluxError
from fastflux_core.flux import FluxAdapter
from fastflux_core.importance import importance_scores, minmax, order_blocks, rank, spearman, write_plot_data
from fastflux_core.params import ImportanceParams
from test_adapter import _inputs, _model_forward


def test_eq2_hand_computed():
    # block 0: removing it leaves FID lowest and alignment highest → least important
    fid = [12.0, 40.0, 20.0, 40.0]
    clip = [0.80, 0.20, 0.60, 0.20]
    fid_n, clip_n, s = importance_scores(fid, clip, alpha=0.5, beta=0.5)
    np.testing.assert_allclose(fid_n, [0.0, 1.0, 8 / 28, 1.0])
    np.testing.assert_allclose(clip_n, [1.0, 0.0, 4 / 6, 0.0])
    np.testing.assert_allclose(s, [-1.0, 0.0, -(0.5 * 20 / 28 + 0.5 * 4 / 6), 0.0])
    # ties (blocks 1 and 3) keep block order
    assert order_blocks(s, "importance") == [0, 2, 1, 3]


def test_eq2_weights_and_improving_block():
    # block 2's removal *improves* FID below every other ablation: FID_norm 0, most prunable by FID
    fid = [30.0, 25.0, 5.0]
    clip = [0.5, 0.9, 0.1]
    _, _, s_fid_only = importance_scores(fid, clip, alpha=1.0, beta=0.0)
    assert order_blocks(s_fid_only, "importance")[0] == 2
    _, _, s_clip_only = importance_scores(fid, clip, alpha=0.0, beta=1.0)
    assert order_blocks(s_clip_only, "importance") == [1, 0, 2]
    _, _, s = importance_scores(fid, clip, alpha=0.5, beta=0.5)
    np.testing.assert_allclose(s, [-0.5 * 0.0 - 0.5 * 0.5, -0.5 * 0.2 - 0.5 * 1.0, -0.5 * 1.0 - 0.5 * 0.0])


def test_minmax_all_equal_is_zero():
    assert minmax([3.0, 3.0]).tolist() == [0.0, 0.0]


def test_depth_orders():
    s = [0.3, -0.2, 0.1]
    assert order_blocks(s, "start2end") == [0, 1, 2]
    assert order_blocks(s, "end2start") == [2, 1, 0]


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_latent_error():
    ref = torch.randn(3, 4, 8, 8)
    same = latent_error(ref.clone(), ref)
    assert same["proxy_mse"] == 0 and same["proxy_cos"] == pytest.approx(1.0)
    assert latent_error(-ref, ref)["proxy_cos"] == pytest.approx(-1.0)


def _blocks(n_double=2, n_single=2):
    out = [{"index": i, "kind": "double", "name": f"d{i:02d}"} for i in range(n_double)]
    return out + [{"index": n_double + j, "kind": "single", "name": f"s{j:02d}"} for j in range(n_single)]


def _records():
    fid = [5.0, 50.0, 10.0, 20.0]
    align = [0.9, 0.1, 0.8, 0.5]
    mse = [0.01, 0.5, 0.02, 0.1]
    return [{"block": i, "fid": f, "fid_real": f + 1, "judge_alignment": a, "proxy_mse": m, "proxy_cos": 1 - m}
            for i, (f, a, m) in enumerate(zip(fid, align, mse))]


def test_rank_fid_clip():
    cfg = ImportanceParams(blocks=[0, 1, 2, 3])
    r = rank(_records(), _blocks(), cfg)
    assert r["order"] == [0, 2, 3, 1]
    assert [b["rank"] for b in r["blocks"]] == [0, 3, 1, 2]
    assert r["clip_key"] == "judge_alignment" and r["fid_key"] == "fid"
    assert r["spearman_proxy"] == pytest.approx(1.0)
    assert r["blocks"][1]["score"] == pytest.approx(0.0) and r["blocks"][0]["score"] == pytest.approx(-1.0)
    assert rank(_records(), _blocks(), cfg.model_copy(update={"order": "end2start"}))["order"] == [3, 2, 1, 0]


def test_rank_proxy_only_and_missing_blocks(tmp_path):
    recs = [{k: v for k, v in r.items() if k.startswith("proxy") or k == "block"} for r in _records()]
    r = rank(recs, _blocks(), ImportanceParams(blocks=[0, 1, 2, 3], method="proxy"))
    assert r["order"] == [0, 2, 3, 1] and "spearman_proxy" not in r
    with pytest.raises(FastFluxError, match="cover blocks"):
        rank(recs[:3], _blocks(), ImportanceParams(blocks=[0, 1, 2, 3], method="proxy"))
    write_plot_data(r, tmp_path)
    lines = (tmp_path / "importance.csv").read_text().splitlines()
    assert lines[0] == "position,block,name,kind,score" and len(lines) == 5
    assert lines[1].startswith("0,0,d00,double,") and sum(",single," in line for line in lines) == 2


@torch.no_grad()
def test_ablated_model_equals_block_output_replaced_by_input():
    x = _inputs()
    for index in (1, 3):
        hooked = tiny_transformer()
        block = FluxAdapter(hooked).block(index)
        # the full model, but this block's output is replaced by its input
        block.register_forward_hook(
            lambda mod, args, kwargs, out: (kwargs["encoder_hidden_states"], kwargs["hidden_states"]), with_kwargs=True)
        ablated = tiny_transformer()
        FluxAdapter(ablated).skip(index)
        torch.testing.assert_close(_model_forward(ablated, x), _model_forward(hooked, x), rtol=0, atol=0)
