"""capture.inputs: noised (fastflux_core/capture.py): the training store holds x_t = (1 − σ)·x_0 + σ·ε
made from the full model's final latents (stage endpoints), and the calibration store's rows, recorded
by a forward that stops after the replaced block, are those a whole forward records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import digit_captions, tiny_params, tiny_workdir

from fastflux_core.capture import Armed, BlockIOHooks, capture_step, make_endpoints, noised, noised_forwards
from fastflux_core.chain import ChainState, make_plan
from fastflux_core.chain_model import build_chain_model
from fastflux_core.codec import pack
from fastflux_core.io import load_tensors
from fastflux_core.prompts import prompt_items
from fastflux_core.sampling import initial_noise
from fastflux_core.store import StoreReader


@pytest.fixture(scope="module")
def noised_capture(tmp_path_factory):
    root, mp = tiny_workdir(tmp_path_factory, "noised", train_steps=20)
    params = tiny_params(**{"capture.inputs": "noised"})
    sets = {"calibration": digit_captions(name="calibration"), "training": digit_captions(name="training")}
    (root / "endpoints").mkdir()
    record = make_endpoints(params, sets, root / "endpoints")
    step = make_plan([3, 1, 4], 3, 5, params.sandwich.width)[0]
    out = root / "capture"
    out.mkdir()
    capture_step(params, step, ChainState(), sets["calibration"], sets["training"], "b3", out,
                 endpoints=root / "endpoints")
    yield {"root": root, "params": params, "sets": sets, "record": record, "step": step, "out": out}
    mp.undo()


def test_training_inputs_are_the_formula_on_the_full_models_final_latents(noised_capture):
    c = noised_capture
    params, store = c["params"], StoreReader(c["out"] / "training.zarr")
    x0 = load_tensors(c["root"] / "endpoints" / "training.safetensors")["latents"]  # (N, C, h, w)
    s = params.prompts.training
    items = prompt_items(len(c["sets"]["training"].prompts), s.images_per_prompt, s.seed)
    assert c["record"]["training"]["items"] == len(items) == len(x0)
    eps = initial_noise(items, x0.shape[1], *x0.shape[-2:])
    latents, seeds, sigmas = store.read("latents"), store.read("seed"), store.read("timestep")
    prompts = store.read("prompt")
    index = {(it.prompt, it.seed): n for n, it in enumerate(items)}
    assert len(latents) == len(items) * params.capture.timesteps
    for row in range(len(latents)):
        n = index[int(prompts[row]), int(seeds[row])]
        want = pack(noised(x0[n : n + 1], eps[n : n + 1], float(sigmas[row])))[0]  # (N_img, C_tok)
        assert torch.allclose(torch.as_tensor(np.asarray(latents[row])), want, atol=1e-5), row
    assert len(set(np.round(np.asarray(sigmas), 6).tolist())) == params.capture.timesteps  # σ varies by step


def test_a_forward_stopped_after_the_block_records_the_rows_of_a_whole_one(noised_capture, tmp_path):
    """The calibration rows of the noised capture come from forwards that stop after block i; the
    model's own whole forward (keyword calls) on the same inputs records the same rows."""
    from fastflux_core.store import StoreWriter
    from fastflux_core.store import calibration_specs

    c = noised_capture
    params, step = c["params"], c["step"]
    adapter = build_chain_model(params, ChainState())
    embeds = c["sets"]["calibration"]
    s = params.prompts.calibration
    items = prompt_items(len(embeds.prompts), s.images_per_prompt, s.seed)[:8]
    x0 = load_tensors(c["root"] / "endpoints" / "calibration.safetensors")["latents"][:8]
    timesteps = torch.linspace(1000, 250, params.sampling.steps)
    rows = {}
    for how in ("stopped", "whole"):
        cap = params.capture
        writer = StoreWriter(tmp_path / f"{how}.zarr", calibration_specs(adapter.model.inner_dim, cap.image_tokens,
                                                                          cap.text_tokens),
                             len(items) * 2, 8, 4, "float32", check_space=False)
        armed = Armed([0, 2], items, (timesteps / 1000).tolist())
        hooks = BlockIOHooks(writer, armed, cap.image_tokens, cap.text_tokens, 7, "b3")
        handles = hooks.attach(adapter, step.block, embeds.prompt_embeds.shape[1])

        def whole(s_, batch, x, negative):
            armed(s_, batch, x, negative)
            adapter.call(x)  # the model's forward: blocks called with keywords, every block run

        with torch.no_grad():
            if how == "stopped":
                noised_forwards(adapter, embeds, items, x0, params.sampling, [0, 2], timesteps, x0.shape[1], armed,
                                stop=step.block + 1)
            else:
                noised_forwards(adapter, embeds, items, x0, params.sampling, [0, 2], timesteps, x0.shape[1], whole,
                                stop=0)
        for h in handles:
            h.remove()
        writer.close()
        r = StoreReader(tmp_path / f"{how}.zarr")
        rows[how] = {k: np.asarray(r.read(k)) for k in ("block_in_img", "residual_img", "residual_txt", "temb", "seed")}
    for k in rows["whole"]:
        assert rows["whole"][k].shape == rows["stopped"][k].shape and len(rows["whole"][k]) > 0
        np.testing.assert_allclose(rows["stopped"][k], rows["whole"][k], atol=1e-5, err_msg=k)
