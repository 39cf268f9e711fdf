"""The FLUX.1-dev code path at FLUX.1-dev's block width: a random-weight diffusers folder with hidden
3072 (24 heads × 128), joint attention 4096, pooled 768 and 64 input channels — one double and one
single block — through ``model.source: flux`` in bfloat16 on the CPU: encode → capture → solve →
sandwich → assemble → reload (the whole ``dvc repro`` on it: ``bash scripts/flux_width.sh``)."""

import pytest
import torch

from fastflux_core import source, text
from fastflux_core.assemble import assemble, pruned_model
from fastflux_core.capture import capture_step
from fastflux_core.chain import ChainState, load_solution, make_plan
from fastflux_core.evaluation import call_model, forward_inputs
from fastflux_core.export import load_pruned
from fastflux_core.params_file import parse_params
from fastflux_core.rehearsal import write_flux_width_folder
from fastflux_core.sandwich import train_sandwich
from fastflux_core.solve import save_solution, solve_store
from fastflux_core.store import StoreReader
from fastflux_core.text import encode_prompts
from test_params import _default


@pytest.fixture(scope="module")
def flux_width(tmp_path_factory):
    return write_flux_width_folder(tmp_path_factory.mktemp("fw") / "flux", num_layers=1, num_single_layers=1)


def _params(folder):
    d = _default()
    d["model"] = {"source": "flux", "path": str(folder), "dtype": "bfloat16", "device": "cpu"}
    d["text"]["max_sequence_length"] = 8
    d["sampling"].update(height=32, width=32, steps=2, batch_size=4)  # VAE ÷8, packed 2×2: 4 image tokens
    d["importance"]["blocks"] = [0, 1]
    d["prompts"]["calibration"]["images_per_prompt"] = d["prompts"]["training"]["images_per_prompt"] = 1
    d.update(ratio=0.5, max_ratio=0.5, steps={"1": {"prev": 0}})
    d["capture"].update(timesteps=2, image_tokens=4, text_tokens=8, dtype="bfloat16", shard_samples=4,
                        chunk_samples=4)
    d["sandwich"].update(train_steps=2, batch_size=4, micro_batch=2, round_samples=8, holdout=0.25)
    return parse_params(d)


def test_capture_solve_sandwich_assemble_reload_at_flux_width(flux_width, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params(flux_width)
    encoder = text.load_text_encoder(params.model, params.text)
    cal = encode_prompts(encoder, [f"a photo of object {i}" for i in range(4)], batch_size=4)
    train = encode_prompts(encoder, [f"a painting of scene {i}" for i in range(4)], batch_size=4)
    assert cal.prompt_embeds.shape == (4, 8, 4096) and cal.pooled.shape == (4, 768)  # T5 and CLIP widths

    step = make_plan([1, 0], 1, 2, params.sandwich.width)[0]  # replace the single block; LoRA on the double
    assert (step.block, step.sandwich) == (1, (0, 1))
    capture_step(params, step, ChainState(), cal, train, "single_transformer_blocks.0", tmp_path)
    store = StoreReader(tmp_path / "calibration.zarr")
    assert store.stored_as == "bfloat16" and store.read("block_in_img").shape == (4 * 2 * 4, 3072)
    assert StoreReader(tmp_path / "training.zarr").read("latents").shape == (4 * 2, 4, 64)

    sols, _ = solve_store(store, params.solve.ridge, params.solve.chunk_rows)
    save_solution(tmp_path / "solve.safetensors", sols)
    w, b = load_solution(tmp_path / "solve.safetensors")["joint"]
    assert w.shape == (3072, 3072) and b.shape == (3072,) and torch.isfinite(w).all()

    state, record = train_sandwich(params, step, ChainState(), load_solution(tmp_path / "solve.safetensors"),
                                   StoreReader(tmp_path / "training.zarr"), train)
    assert record["lora_blocks"] == [0] and record["holdout_prompts"] == 1
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("holdout_loss_init", "holdout_loss_trained"))

    states = [ChainState(), state]
    rec = assemble(params, states, 2, tmp_path / "pruned")
    assert rec["n_pruned"] == 1 and rec["replaced_blocks"][0]["kind"] == "single"
    reloaded = load_pruned(tmp_path / "pruned" / "transformer")
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.num_attention_heads * reloaded.config.attention_head_dim == 3072
    in_memory = pruned_model(params, states, 1)[0].model
    codec = source.load_codec(params.model, in_memory)
    x = forward_inputs(params.sampling, in_memory, codec, train, torch.device("cpu"))
    torch.testing.assert_close(call_model(reloaded, x), call_model(in_memory, x), rtol=0, atol=0)  # bit-exact round trip
