"""The examples a user copies (examples/<model>/params.yaml, issue 31): their budget runs without the
weights — from the family's published configs — and sees what the published parameter counts say
(the README's tables are that command's output). Each file's validity: tests/test_params.py."""

from pathlib import Path

import pytest
import yaml

from fastflux_core import budget, stage_peaks
from fastflux_core.params_file import parse_params

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def example(name: str):
    d = yaml.safe_load((ROOT / "examples" / name / "params.yaml").read_text())
    assert not Path(d["model"]["path"]).exists()  # no weights: the published configs stand in
    return parse_params(d)


# example → its text encoders' published bf16 bytes: SD3.5-large's CLIP-L 0.247 + CLIP-G 1.389 + T5-XXL
# 9.525 GB; FLUX.2-dev's Mistral Small 3.1, 48.0 GB; Qwen-Image's Qwen2.5-VL, 16.58 GB
TEXT_ENCODER_BYTES = {"sd3.5-large": 11.16e9, "flux2-dev": 48.0e9, "qwen-image": 16.58e9}


@pytest.mark.parametrize("name", sorted(TEXT_ENCODER_BYTES))
def test_the_budget_of_an_example_runs_without_weights_and_sees_its_published_sizes(name):
    encode = stage_peaks.measure_encode(example(name))
    assert TEXT_ENCODER_BYTES[name] < encode.peak < TEXT_ENCODER_BYTES[name] * 1.1  # weights + one batch


def test_sd35_large_samples_resident_on_a_24_gb_card():
    """Its published transformer is 16.3 GB: no offloading needed (FLUX.2-dev's 64.4 and Qwen-Image's
    40.9 GB are offloaded; the README's tables)."""
    assert budget.choose_placement("evaluate", example("sd3.5-large"), 22.0) == "resident"


def test_a_stage_a_24_gb_card_cannot_run_is_named_with_what_it_needs():
    """FLUX.2-dev's text encoder alone is 44.7 GiB and is never offloaded: the table says so in a line."""
    rows = [budget.Row("encode", 1, "resident", 45.1, 25.7, True, 38552, 0.03, 0.03),
            budget.Row("evaluate", 1, "offloaded", 8.8, 0.0, False, 7.7e6, 5.36, 5.36)]
    summary = {"gpus": 1, "gpu_memory_gb": 22.0, "activation_disk_gb": 1, "activation_disk_gb_with_dvc_copy": 2,
               "total_hours": 5.4, "tflops": 400.0, "total_hours_consumer": 50, "consumer_tflops": 41.0,
               "max_peak_gib": 45.1}
    assert budget.format_table(rows, summary).splitlines()[-1] == (
        "does not fit 22 GiB: encode needs 45.1 GiB (resident): its text encoders are loaded whole — run it on a card "
        "with that much")
