"""A pruned export stacks with diffusers' caches (issue 32, 2: the test part): First-Block Cache and
TaylorSeer hooks find every block of the exported FLUX.1 and FLUX.2 transformers — the BRLL stand-ins
included — and the pipeline runs; with First-Block Cache at threshold 0 (never reuse) it is exactly
the uncached pipeline, and at a threshold that always reuses it differs. torchao's weight-only int8
runs on the export alone and under a cache. (The latency and fidelity table is benchmarks/stacking.py's,
at FLUX width; README.md shows it.)"""

from __future__ import annotations

import pytest
import torch
from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

from fastflux_core.export_folder import load_pipeline
from tiny import with_random_linears, write_export


def _export(folder, tmp_path, replaced: list[int]):
    """The base folder's transformer with BRLL linears (small random W, b) at ``replaced``, exported
    beside the base's components and loaded back as a pipeline (FastFLUX's loader)."""
    from diffusers import DiffusionPipeline

    model = with_random_linears(DiffusionPipeline.from_pretrained(str(folder)).transformer, replaced)
    return load_pipeline(write_export(model, replaced, folder, tmp_path)[0])


def _run(pipe, guidance: float) -> torch.Tensor:
    return pipe(prompt=["a red cube"], height=16, width=16, num_inference_steps=6, guidance_scale=guidance,
                generator=torch.Generator().manual_seed(0), output_type="latent", max_sequence_length=8).images


@pytest.mark.parametrize("family", ["flux", "flux2"])
@torch.no_grad()
def test_caches_hook_every_block_of_a_pruned_export_and_run(family, tiny_flux_folder, tiny_flux2_folder, tmp_path):
    folder, guidance = (tiny_flux_folder, 3.5) if family == "flux" else (tiny_flux2_folder, 1.0)
    pipe = _export(folder, tmp_path, [0, 2])  # the first block (First-Block Cache's probe) and the first single
    plain = _run(pipe, guidance)
    if family == "flux":  # diffusers 0.42.1's First-Block Cache cannot run FLUX.2 at all (next test)
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # never below: every step computed
        torch.testing.assert_close(_run(pipe, guidance), plain, rtol=0, atol=0)
        pipe.transformer.disable_cache()
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))  # always below: later steps reused
        reused = _run(pipe, guidance)
        assert torch.isfinite(reused).all() and not torch.allclose(reused, plain)
        pipe.transformer.disable_cache()
    pipe.transformer.enable_cache(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=1,
                                                        taylor_factors_dtype=torch.float32))
    taylor = _run(pipe, guidance)
    assert taylor.shape == plain.shape and torch.isfinite(taylor).all() and not torch.allclose(taylor, plain)
    pipe.transformer.disable_cache()
    torch.testing.assert_close(_run(pipe, guidance), plain, rtol=0, atol=0)  # off again: the plain pipeline


@pytest.mark.parametrize("family", ["flux", "flux2"])
@torch.no_grad()
def test_int8_weights_stack_on_a_pruned_export_alone_and_with_a_cache(family, tiny_flux_folder, tiny_flux2_folder, tmp_path):
    """torchao's weight-only int8 (what runs on a CPU; benchmarks/stacking.py times it at FLUX width)
    quantises the BRLL linears with the kept blocks' layers; the export then runs alone and under a
    cache, close to the unquantised one but not equal to it."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    folder, guidance = (tiny_flux_folder, 3.5) if family == "flux" else (tiny_flux2_folder, 1.0)
    pipe = _export(folder, tmp_path, [0, 2])
    plain = _run(pipe, guidance)
    quantize_(pipe.transformer, Int8WeightOnlyConfig())
    linear = pipe.transformer.transformer_blocks[0].linears[next(iter(pipe.transformer.transformer_blocks[0].linears))]
    assert type(linear.weight).__name__ == "Int8Tensor"  # the stand-in's own linear is quantised too
    int8 = _run(pipe, guidance)
    assert torch.isfinite(int8).all() and not torch.equal(int8, plain)
    torch.testing.assert_close(int8, plain, rtol=0.1, atol=0.1)
    cache = FirstBlockCacheConfig(threshold=0.0) if family == "flux" else TaylorSeerCacheConfig(cache_interval=2)
    pipe.transformer.enable_cache(cache)
    cached = _run(pipe, guidance)
    assert torch.isfinite(cached).all() and cached.shape == plain.shape
    if family == "flux":  # threshold 0 never reuses: exactly the int8 pipeline
        torch.testing.assert_close(cached, int8, rtol=0, atol=0)


@torch.no_grad()
def test_first_block_cache_fails_on_flux2_before_any_pruning(tiny_flux2_folder):
    """Why FLUX.2 is not stacked with First-Block Cache: in diffusers 0.42.1 it fails on the unpruned
    model — its head (a double block) returns a pair, its tail (a single block) one joined tensor, and
    the hook subtracts one from the other. Not ours to fix; if diffusers does, this test says so."""
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(tiny_flux2_folder))
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    with pytest.raises(TypeError, match="unsupported operand type"):
        _run(pipe, 1.0)


def test_the_benchmark_runs_the_arms_asked_on_a_given_base_and_export(tiny_flux_folder, tmp_path, monkeypatch):
    """benchmarks/stacking.py with --base and --export (a user's own model and its export instead of the
    rehearsal) and a subset of --arms: each runs, First-Block Cache at threshold 0 computes every block
    and changes nothing, int8 changes a little, and the JSON has a row per arm."""
    import json
    import sys
    from pathlib import Path

    from diffusers import DiffusionPipeline

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    sys.modules.pop("stacking", None)
    import stacking

    model = with_random_linears(DiffusionPipeline.from_pretrained(str(tiny_flux_folder)).transformer, [2])
    export = write_export(model, [2], tiny_flux_folder, tmp_path / "export")[0]
    monkeypatch.setattr(stacking, "run_async", lambda pipe, size, steps, output_type: [
        pipe(prompt=p, height=size, width=size, num_inference_steps=steps, guidance_scale=3.5,
             generator=torch.Generator().manual_seed(i), output_type=output_type, max_sequence_length=8).images[0]
        for i, p in enumerate(stacking.PROMPTS[:2])])  # the tiny text encoders' short prompts
    monkeypatch.chdir(tmp_path)
    stacking.main(["--base", str(tiny_flux_folder), "--export", str(export), "--size", "16", "--steps", "3",
                   "--warmup", "0", "--repeats", "2", "--fbc-threshold", "0",
                   "--arms", "pruned, pruned + FBC, pruned + int8 + FBC"])  # each arm's kind (the rest: tests above)
    arms = json.loads((tmp_path / "benchmarks" / "results" / "stacking.json").read_text())["arms"]
    assert set(arms) == {"pruned", "pruned + FBC", "pruned + int8 + FBC"}
    assert arms["pruned + FBC"]["psnr_vs_pruned"] == 100 and arms["pruned + FBC"]["blocks_computed"] == 1.0
    assert arms["pruned"]["psnr"] < 100 and 20 < arms["pruned + int8 + FBC"]["psnr_vs_pruned"] < 100
    assert all(r["latency_ratio"] > 0 for r in arms.values())
    with pytest.raises(SystemExit):  # an arm that does not exist: a usage error naming it
        stacking.main(["--arms", "pruned + fp8"])
