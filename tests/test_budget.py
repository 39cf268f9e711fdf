"""The budget command measures device memory on fake tensors: FLUX.1-dev (all 57 blocks, 1024², bf16)
fits 22 GiB in every stage and 100 GB of activation disk; the measurement is torch's MemTracker's;
offloading really lowers the peak; stages choose their placement from it or stop with one line."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tiny import tiny_transformer

from fastflux_core import budget, fake_gpu, placement, resources, stage_peaks
from fastflux_core.errors import FastFluxError
from fastflux_core.params_file import parse_params
from fastflux_core.placement import DeviceMemoryError, choose
from fastflux_core.shapes import transformer_config

ROOT = Path(__file__).resolve().parents[1]


def flux_example(**model) -> object:
    """README's FLUX.1-dev example: 1024², 512 text tokens, bf16, 28 steps, ratio 0.20 (11 steps),
    512 + 512 images, 4 capture timesteps; no folder needed (FLUX.1-dev's published configs)."""
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["model"].update(source="flux", path="/nonexistent/FLUX.1-dev", dtype="bfloat16", device="cuda", **model)
    d["text"].update(max_sequence_length=512, batch_size=8)
    d["sampling"].update(height=1024, width=1024, steps=28, batch_size=4)
    for i, name in enumerate(("calibration", "training", "evaluation", "importance")):
        d["prompts"][name] = {"file": f"/nonexistent/{name}.txt", "images_per_prompt": 1, "seed": 1000 * (i + 1)}
    d["capture"].update(timesteps=4, image_tokens=64, text_tokens=16, dtype="bfloat16")
    d["importance"].update(blocks=list(range(57)), method="proxy")
    d["metrics"].update(fid_features="inception", alignment="clip", real_images=None,
                        inception_path="/nonexistent/inception", clip_path="/nonexistent/clip")
    d["max_ratio"], d["ratio"] = 0.2, 0.2
    d["steps"] = {str(k): {"prev": k - 1} for k in range(1, 12)}
    d["sandwich"].update(micro_batch=2, round_samples=64)
    return parse_params(d)


def readme_flux_example():
    """README's FLUX.1-dev example, the file a user copies (examples/flux1-dev/params.yaml): the proxy
    importance at 1 image and 11 of 28 steps, noised capture, the sweep at 3 chain lengths on 128
    items, the PartiPrompts sets (their paths from the repository root)."""
    d = yaml.safe_load((ROOT / "examples" / "flux1-dev" / "params.yaml").read_text())
    for name in ("calibration", "training", "importance", "evaluation"):
        d["prompts"][name]["file"] = str(ROOT / d["prompts"][name]["file"])
    return parse_params(d)


@pytest.fixture(scope="module")
def readme_budget():
    """The budget of README's FLUX.1-dev example (:func:`readme_flux_example`) on 2 data-parallel GPUs;
    prompt counts from its prompt files."""
    return budget.plan_budget(readme_flux_example(), 22.0, 400.0, {}, gpus=2)


def test_flux1_dev_fits_22_gib_in_every_stage_and_100_gb_of_activation_disk(readme_budget):
    assert transformer_config(flux_example())["num_single_layers"] == 38  # the real FLUX.1-dev shape
    rows, summary = readme_budget
    peaks = {r.stage: r.peak_gib for r in rows}
    by = {r.stage: r for r in rows}  # 2 data-parallel GPUs: 24 ablation items in batches of 4 split evenly
    assert by["ablate@j"].hours_gpus == pytest.approx(by["ablate@j"].hours / 2, abs=0.01)
    assert by["encode"].hours_gpus == by["encode"].hours  # one process
    assert by["sandwich@k"].hours / 2 < by["sandwich@k"].hours_gpus < by["sandwich@k"].hours  # recompute not split
    assert all(p <= 22.0 for p in peaks.values()), peaks
    assert {r.stage: r.placement for r in rows}["capture@k"] == "offloaded"  # 22.2 GiB of weights alone
    assert peaks["capture@k"] < 11.9e9 * 2 / 4 / 2**30  # offloading really lowers the peak: two blocks, the
    # embedders, the VAE and activations
    assert peaks["encode"] > 9.0  # T5-XXL's 4.7 B bf16 parameters are really on the device
    assert summary["activation_disk_gb_with_dvc_copy"] <= 100.0, summary
    assert summary["chain_steps"] == 11


def test_resident_flux1_dev_forward_is_over_22_gib():
    """The measurement sees what the issue measured: the whole model resident does not fit."""
    params = flux_example()
    peak = stage_peaks.measure_sampling(params.model_copy(update={"sampling": params.sampling.model_copy(
        update={"batch_size": 1})}), "resident").peak
    assert 22.0 * 2**30 < peak < 26.0 * 2**30  # 22.2 GiB of weights + activations + the VAE decode


def _peaks(tracker_factory) -> tuple[int, int]:
    """(inference peak, training-step peak) of a tiny model on fake CPU with a given tracker."""
    out = []
    with fake_gpu.fake_device():
        for train in (False, True):
            m = tiny_transformer(0, guidance_embeds=False)
            x = {"hidden_states": torch.empty(4, 64, 16), "encoder_hidden_states": torch.empty(4, 8, 32),
                 "pooled_projections": torch.empty(4, 32), "timestep": torch.ones(4), "img_ids": torch.zeros(64, 3),
                 "txt_ids": torch.zeros(8, 3)}
            mt = tracker_factory()
            mt.track_external(m)
            with mt:
                if train:
                    m(**x, return_dict=False)[0].sum().backward()
                else:
                    with torch.no_grad():
                        m(**x, return_dict=False)
            out.append(int(mt.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]))
    return tuple(out)


def test_our_tracker_reports_torchs_memtracker_peak():
    from torch.distributed._tools.mem_tracker import MemTracker

    assert _peaks(lambda: fake_gpu._tracker("cpu")) == _peaks(MemTracker)


def test_stages_choose_resident_offloaded_or_stop(monkeypatch):
    params = flux_example()
    at = {"resident": 30 * 2**30, "offloaded": 3 * 2**30}
    monkeypatch.setattr(budget, "stage_peak", lambda stage, p, placement: at[placement])
    assert budget.choose_placement("capture@1", params, 80) == "resident"
    assert budget.choose_placement("capture@1", params, 22) == "offloaded"
    with pytest.raises(DeviceMemoryError, match=r"stage capture@1 needs 3\.0 GiB .* model.gpu_memory_gb is 2"):
        budget.choose_placement("capture@1", params, 2)


def test_a_stage_asks_the_estimator_in_its_own_process_only_on_a_gpu_with_offload_auto(monkeypatch):
    """``placement.choose``: the estimator is asked (``python -m fastflux_core.budget --choose``) only for
    CUDA and ``model.offload: auto`` — never imported, so it is no stage's code dep."""
    params = flux_example()
    asked = []
    monkeypatch.setattr(placement, "ask_estimator", lambda p, *args: (asked.append(args), "measuring …\noffloaded\n")[1])

    def with_offload(offload):
        return params.model_copy(update={"model": params.model.model_copy(update={"offload": offload})})

    cuda = torch.device("cuda")
    assert choose("capture@1", with_offload("auto"), cuda) == "offloaded"
    assert asked == [("--choose", "capture@1")]
    assert choose("capture@1", with_offload("auto"), torch.device("cpu")) == "resident"  # no device budget on a CPU
    assert choose("capture@1", with_offload("always"), cuda) == "offloaded"
    assert choose("capture@1", with_offload("never"), cuda) == "resident"
    assert len(asked) == 1


def test_the_estimators_refusal_comes_back_through_the_process_as_one_line(monkeypatch, tmp_path):
    """The real process: the default's capture@1 on a 1e-6 GB device does not fit even offloaded; the
    estimator says so in one line on stderr — nothing else: none of torch's warnings about fake tensors,
    its memory tracker or a missing CUDA runtime (issue 30, 7) — and exits with its own status (3); the
    stage re-raises that line as :class:`DeviceMemoryError`."""
    import subprocess
    import sys

    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["model"]["gpu_memory_gb"] = 1e-6
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(d))
    done = subprocess.run([sys.executable, "-m", "fastflux_core.budget", "--params", str(tmp_path / "p.yaml"),
                           "--choose", "capture@1"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == placement.DOES_NOT_FIT and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: stage capture@1 needs ") and "even with its blocks offloaded" in done.stderr
    monkeypatch.setattr(placement.subprocess, "run", lambda *a, **k: done)
    with pytest.raises(DeviceMemoryError, match=r"^stage capture@1 needs \d+\.\d GiB of device memory even with its "
                                                r"blocks offloaded .*model.gpu_memory_gb is 1e-06"):
        placement.ask_estimator(parse_params(d), "--choose", "capture@1")


def test_any_other_refusal_of_the_estimator_is_not_called_a_memory_error(monkeypatch, capsys):
    """Exit status 2 is every other cause a user can fix (argparse's usage errors exit 2 too): it comes
    back as the same line, typed :class:`FastFluxError` — not as "does not fit". The estimator's own
    argparse writes the stderr ("<prog>: error: …", in this process: a subprocess costs 5 s), which
    the stage's side reads."""
    import subprocess

    with pytest.raises(SystemExit) as exit_:
        budget.main(["--choose"])
    done = subprocess.CompletedProcess([], exit_.value.code, "", capsys.readouterr().err)
    assert done.returncode == 2 and ": error: argument --choose: expected one argument" in done.stderr
    monkeypatch.setattr(placement.subprocess, "run", lambda *a, **k: done)
    with pytest.raises(FastFluxError, match=r"^argument --choose: expected one argument$") as caught:
        placement.ask_estimator(parse_params(yaml.safe_load((ROOT / "params.yaml").read_text())), "--choose")
    assert not isinstance(caught.value, DeviceMemoryError)


def test_the_params_the_estimator_reads_back_are_the_params_the_stage_holds(monkeypatch, tmp_path):
    """ask_estimator hands the stage's validated params to the estimator as YAML (``model_dump``); read
    back with the project's own reader they must be equal — else the estimator would size another run
    than the stage's. Non-default values in every section, the learning rate "auto" and a tuple included."""
    import subprocess

    from fastflux_core.params_file import read_params

    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["sandwich"]["learning_rate"] = "auto"
    d["solve"]["condition"] = "temb"
    d["importance"]["order"] = "end2start"
    d["model"]["gpu_memory_gb"] = 40.5
    held = parse_params(d)
    seen = {}

    def estimator(cmd, **kwargs):
        seen["params"] = read_params(cmd[cmd.index("--params") + 1])
        return subprocess.CompletedProcess(cmd, 0, "resident\n", "")

    monkeypatch.setattr(placement.subprocess, "run", estimator)
    assert placement.ask_estimator(held, "--choose", "capture@1") == "resident\n"
    assert seen["params"] == held


def test_validate_stops_a_run_a_stage_of_which_does_not_fit_the_gpu(monkeypatch, tmp_path):
    """Stage validate (``resources.check_resources``): on a CUDA device the estimator checks every
    stage's measured peak against model.gpu_memory_gb (``budget.check_fits``: one line naming the
    first that does not fit); nothing is measured on a CPU."""
    params = flux_example(gpu_memory_gb=8)
    rows = [budget.Row("encode", 1, "resident", 10.6, 0.0, True, 1.0, 0.0, 0.0),
            budget.Row("capture@k", 11, "offloaded", 2.9, 4.2, True, 1.0, 0.0, 0.0)]
    monkeypatch.setattr(budget, "plan_budget", lambda *a, **k: (rows, {}))
    with pytest.raises(DeviceMemoryError, match=r"^stage encode needs 10\.6 GiB of device memory \(resident\), "
                                                r"model.gpu_memory_gb is 8"):
        budget.check_fits(params, 8, {})
    budget.check_fits(params, 11, {})

    assumed = {"calibration": 512, "training": 512, "importance": 64, "evaluation": 512}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**15, 0, 10**15))
    asked = []
    monkeypatch.setattr(resources, "ask_estimator", lambda p, *args: asked.append(args))
    monkeypatch.setattr(resources, "resolve_device", lambda name: torch.device("cuda"))
    resources.check_resources(params, tmp_path, assumed)
    assert asked == [("--check", "--prompts", "calibration=512,training=512,importance=64,evaluation=512")]
    monkeypatch.setattr(resources, "resolve_device", lambda name: torch.device("cpu"))
    resources.check_resources(params, tmp_path, assumed)
    assert len(asked) == 1  # measured on the GPU only


def test_validate_counts_the_chains_stores_twice_against_free_disk(monkeypatch, tmp_path):

    from fastflux_core.store import StoreError

    params = flux_example()
    assumed = {"calibration": 512, "training": 512, "importance": 64, "evaluation": 512}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 60 * 10**9, 60 * 10**9))
    # 11 steps × (512 + 512 images × 4 timesteps): 34.1 GB of stores, twice
    with pytest.raises(StoreError, match=r"need about 68\.2 GB under .*capture@1\.\.11, with DVC's cache copy\), 60\.0 GB"):
        resources.check_resources(params.model_copy(update={"model": params.model.model_copy(update={"device": "cpu"})}),
                                  tmp_path, assumed)


def test_a_resident_measurement_over_the_limit_stops_before_the_forward(monkeypatch):
    """Choosing a placement asks only whether resident fits: FLUX.1-dev's 22.2 GiB of weights are over
    22 GiB before anything runs, so the measurement stops there (no fake forward); under a limit it
    does not reach, the measurement is the one without a limit."""
    calls = []
    real_velocity = stage_peaks.velocity
    monkeypatch.setattr(stage_peaks, "velocity", lambda *a: (calls.append(1), real_velocity(*a))[1])
    params = flux_example()
    with pytest.raises(fake_gpu.OverLimit, match="GiB on cuda > 22.00 GiB"), fake_gpu.stop_above(22 * 2**30):
        stage_peaks.measure_sampling(params, "resident")
    assert calls == []
    small = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))  # the embedded default
    free = stage_peaks.measure_sampling(small, "resident")
    with fake_gpu.stop_above(free.peak):
        assert stage_peaks.measure_sampling(small, "resident") == free


FLOP_KEYS = ("per_prompt", "transformer_per_item_step", "decode_per_item", "per_row", "solve",
             "recompute_per_sample_block", "train_per_sample", "check_per_sample", "teacher_per_sample")


def stub_measurements(monkeypatch, **flops: int) -> None:
    """Every device measurement plan_budget makes returns a fixed Measured (peak 1 byte; ``flops``, else
    1 per unit): for tests of the table's arithmetic and rows, which need no fake run (each is seconds)."""
    m = stage_peaks.Measured(1, {k: flops.get(k, 1) for k in FLOP_KEYS})
    for name in ("measure_encode", "measure_sampling", "measure_solve", "measure_sandwich", "measure_distill"):
        monkeypatch.setattr(budget, name, lambda *a, **k: m)


def test_the_finisher_the_baseline_and_the_timestep_aware_linears_are_budgeted(monkeypatch):
    """Stage assemble with finish.steps > 0 holds the base (teacher) and the chain model (student) at
    once; stage baseline (on when baseline.ratios names some) the base twice; a timestep-aware
    replacement stores a D × D U beside each W."""
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    assumed = {"calibration": 64, "training": 64, "importance": 16, "evaluation": 64}
    with monkeypatch.context() as stubbed:  # the rows and the disk: no measurement needed
        stub_measurements(stubbed, teacher_per_sample=10**12, train_per_sample=10**12)
        d["finish"]["steps"] = 0  # the paper's method: no finisher (params.yaml's default has one)
        plain = budget.plan_budget(parse_params(d), 22.0, 400.0, assumed)[0]
        d["finish"]["steps"], d["baseline"]["ratios"], d["solve"]["condition"] = 5, [0.1], "temb"
        d["finish"]["micro_batch"] = d["baseline"]["micro_batch"] = 1  # activations small beside the weights
        params = parse_params(d)
        rows = {r.stage: r for r in budget.plan_budget(params, 22.0, 400.0, assumed)[0]}
    assert {r.stage for r in plain} & {"assemble (finisher)", "baseline"} == set() and "assemble" in {r.stage for r in plain}
    assert "assemble" not in rows and rows["assemble (finisher)"].tflop > 0 and rows["baseline"].hours > 0
    weights = sum(p.numel() * p.element_size() for p in stage_peaks.build_transformer(params).parameters())  # float32
    finish, base = stage_peaks.measure_distill(params, "finish"), stage_peaks.measure_distill(params, "baseline")
    assert 1.5 * weights < finish.peak < 3 * weights  # teacher and student (1 of 12 blocks replaced) both there
    # full fine-tuning: teacher, student, its gradients and AdamW's two moments (float32)
    assert 5 * weights < base.peak < 8 * weights and base.flops["trainable_params"] * 4 == weights
    # FLUX.1-dev's setting: a bf16 base, the L1 model fully fine-tuned in float32 (inputs cast as distill
    # casts them), and the local objective (the teacher's state before every block held for the step)
    d["model"]["dtype"] = "bfloat16"
    real = stage_peaks.measure_distill(parse_params(d), "baseline", real="cpu")  # fake tensors let a dtype mismatch pass
    assert real.flops["trainable_params"] == base.flops["trainable_params"]
    d["baseline"]["objective"] = "local"
    local = stage_peaks.measure_distill(parse_params(d), "baseline")
    # (embedders and head get no gradient from the local loss: no AdamW state for them)
    assert local.flops["trainable_params"] == base.flops["trainable_params"] and local.peak > weights / 2 + 3 * weights
    dim = stage_peaks.Shapes.of(params).dim
    u_bytes = sum(k * 2 * dim * dim * 4 for k in range(1, len(params.steps) + 1))  # each state's Us, two streams
    sandwich_plain = next(r for r in plain if r.stage == "sandwich@k")
    assert rows["sandwich@k"].disk_gb == pytest.approx(sandwich_plain.disk_gb + u_bytes / 1e9, abs=0.011)


def test_the_readme_flux_example_takes_under_9_h100_hours_within_22_gib_and_100_gb(readme_budget):
    """Issue 28's goal on the README's example: ≤ 9 H100-hours at 400 TFLOP/s, every stage ≤ 22 GiB,
    ≤ 100 GB of activation disk with DVC's copy; the sweep ≤ 20 % of what the chain costs; and every
    total is the sum of its rows (H100-class, 24 GB card, GPUs)."""
    rows, summary = readme_budget
    by = {r.stage: r for r in rows}
    assert summary["total_hours"] <= 9.0, budget.format_table(rows, summary)
    assert all(r.peak_gib <= 22.0 for r in rows) and summary["activation_disk_gb_with_dvc_copy"] <= 100.0
    chain = sum(by[s].hours for s in ("endpoints", "capture@k", "solve@k", "sandwich@k"))
    assert by["sweep"].hours <= 0.2 * chain
    for column, total in (("hours", "total_hours"), ("hours_consumer", "total_hours_consumer"),
                          ("hours_gpus", "total_hours_gpus")):
        assert summary[total] == pytest.approx(sum(getattr(r, column) for r in rows), abs=0.05 + 0.005 * len(rows))
    for r in rows:  # the 24 GB card's hours are the same FLOPs at its stated rate
        assert r.hours_consumer == pytest.approx(r.tflop * 1e12 / (budget.CONSUMER_TFLOPS * 1e12) / 3600, abs=0.01)


def test_the_exported_models_size_is_that_of_the_model_assemble_makes():
    """Issue 30 (8): the budget rounded ratio·N where assemble floors it (the default: 0.15 × 12 blocks,
    2 blocks against assemble's 1; FLUX.1-dev at 0.15: 9 against 8) and left out the linears."""
    from fastflux_core.families import adapter_for
    from fastflux_core.params import n_replaced
    from fastflux_core.pruned_flux import LinearReplacement

    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    model = stage_peaks.build_transformer(params)
    a = adapter_for(model)
    n = n_replaced(params.ratio, len(a.blocks))
    assert (params.ratio, len(a.blocks), n) == (0.15, 12, 1)
    for i in range(len(a.blocks) - n, len(a.blocks)):
        a.swap(i, LinearReplacement(model.inner_dim, a.blocks[i].kind))
    assert budget.params_bytes(params, k=3) == sum(p.numel() for p in model.parameters()) * 4  # float32


def test_the_sandwich_row_counts_the_rate_probe_and_the_held_out_checks(monkeypatch):
    """Stage sandwich's FLOPs are its boundary recompute, its training steps — with ``learning_rate:
    auto`` also each probe rate's ``probe_steps`` — and its held-out checks (HeldOutCheck: up to
    ``round_samples`` held-out samples at the start, every ``eval_every`` steps and after each probe,
    then the start and the state kept on all of them). The held-out samples are every sample of the
    prompts training.holdout_split holds out: round(0.07 · 30) = 2 prompts × 4 images × 4 captured
    timesteps = 32 (not 7 % of the 480 samples). Measured FLOPs per sample replaced by round numbers,
    the row is that sum, worked out by hand below."""
    train, check = 10**12, 10**11  # per sample: a training step's, a held-out forward's
    stub_measurements(monkeypatch, recompute_per_sample_block=0, train_per_sample=train, check_per_sample=check)
    d = yaml.safe_load((ROOT / "params.yaml").read_text())
    d["sandwich"].update(holdout=0.07, train_steps=200, eval_every=20, batch_size=32, round_samples=512,
                         probe_rates=[1e-4, 3e-4, 1e-3, 3e-3], probe_steps=20)
    d["prompts"]["training"]["images_per_prompt"], d["capture"]["timesteps"] = 4, 4
    counts = {"calibration": 30, "training": 30, "importance": 20, "evaluation": 20}
    # 3 chain steps; held out 32 samples. Fixed rate: 200 steps of 32 samples; checks (1 + 200/20) × 32
    # + 2 × 32. Auto: 4 probes of 20 steps more, and a check after each.
    want = {0.001: 3 * (200 * 32 * train + (11 * 32 + 64) * check),
            "auto": 3 * ((200 + 4 * 20) * 32 * train + (15 * 32 + 64) * check)}
    for rate in (0.001, "auto"):
        d["sandwich"]["learning_rate"] = rate
        params = parse_params(d)
        assert len(params.steps) == 3
        rows, _ = budget.plan_budget(params, 22.0, 400.0, counts)
        got = next(r for r in rows if r.stage == "sandwich@k").tflop
        assert got == pytest.approx(want[rate] / 1e12, abs=0.05), (rate, got, want[rate] / 1e12)
