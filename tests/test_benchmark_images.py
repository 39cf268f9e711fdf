"""GenEval and DPG-Bench images (issue 32, 1): the layouts their official evaluators read — GenEval's
<i:05d>/metadata.jsonl + samples/<k:04d>.png, DPG-Bench's <id>.png as a 2 × 2 grid — each image from
its own derived seed, and a real pipeline folder's sampling end to end (the tiny FLUX folder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastflux_core.benchmark_images import dpg_prompts, geneval_prompts, main, write_dpg, write_geneval
from fastflux_core.errors import FastFluxError


def stub(seen: list):
    """Images whose pixels say which seed made them."""
    def generate(prompt, seeds):
        seen.append((prompt, seeds))
        return [np.full((8, 8, 3), s % 251, dtype=np.uint8) for s in seeds]
    return generate


def test_geneval_layout(tmp_path):
    meta = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
            {"tag": "two_object", "prompt": "a photo of a dog and a cup"}]
    (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    seen = []
    write_geneval(geneval_prompts(tmp_path / "meta.jsonl"), stub(seen), 3, 0, tmp_path / "out")
    for i, m in enumerate(meta):
        folder = tmp_path / "out" / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == m  # what evaluate_images.py json.loads
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png"]
        for k, s in enumerate(seen[i][1]):
            assert np.asarray(Image.open(folder / "samples" / f"{k:04d}.png"))[0, 0, 0] == s % 251
    assert [p for p, _ in seen] == [m["prompt"] for m in meta]
    seeds = [s for _, ss in seen for s in ss]
    assert len(set(seeds)) == 6  # every image its own seed
    again = []
    write_geneval(meta, stub(again), 3, 0, tmp_path / "again")
    assert again == seen  # the same seeds for another model: the same starting noise


def test_dpg_layout_is_a_two_by_two_grid_per_prompt_id(tmp_path):
    (tmp_path / "prompts").mkdir()
    for pid, text in (("partiprompts100", "A  red\ncube on a table."), ("coco7", "two dogs")):
        (tmp_path / "prompts" / f"{pid}.txt").write_text(text)
    prompts = dpg_prompts(tmp_path / "prompts")
    assert prompts == {"coco7": "two dogs", "partiprompts100": "A red cube on a table."}
    seen = []
    write_dpg(prompts, stub(seen), 0, tmp_path / "out")
    for (prompt, seeds), pid in zip(seen, prompts):
        grid = np.asarray(Image.open(tmp_path / "out" / f"{pid}.png"))
        assert grid.shape == (16, 16, 3)  # 2 × 2 images of 8 pixels: --resolution 8 --pic-num 4
        quadrants = [grid[:8, :8], grid[:8, 8:], grid[8:, :8], grid[8:, 8:]]
        assert [q[0, 0, 0] for q in quadrants] == [s % 251 for s in seeds]


def test_bad_prompt_files_are_refused(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"text": "no prompt key"}\n')
    with pytest.raises(FastFluxError, match="every line must be a JSON object with a prompt"):
        geneval_prompts(tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_text("not json\n")
    with pytest.raises(FastFluxError, match="not GenEval's evaluation_metadata.jsonl"):
        geneval_prompts(tmp_path / "y.jsonl")
    with pytest.raises(FastFluxError, match="no <id>.txt prompt files"):
        dpg_prompts(tmp_path)


def test_a_pipeline_folder_generates_the_geneval_layout_reproducibly(tmp_path, tiny_flux_folder):
    (tmp_path / "meta.jsonl").write_text(json.dumps({"tag": "single_object", "prompt": "a photo of a cat"}) + "\n")
    args = ["geneval", "--model", str(tiny_flux_folder), "--prompts", str(tmp_path / "meta.jsonl"), "--images", "2",
            "--size", "16", "--steps", "2", "--device", "cpu"]
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    samples = sorted((tmp_path / "a" / "00000" / "samples").iterdir())
    assert [p.name for p in samples] == ["0000.png", "0001.png"]
    first, second = (np.asarray(Image.open(p)) for p in samples)
    assert first.shape == (16, 16, 3) and not np.array_equal(first, second)  # two seeds, two images
    assert all((tmp_path / "b" / "00000" / "samples" / p.name).read_bytes() == p.read_bytes() for p in samples)


def test_an_export_is_loaded_with_its_pruned_transformer(tmp_path, tiny_flux_folder, monkeypatch):
    """An export of ours (model_index.json names pruned_flux) goes through export_folder.load_pipeline."""
    from diffusers import FluxPipeline

    from fastflux_core import export_folder
    from fastflux_core.export import to_pruned
    from fastflux_core.benchmark_images import pipeline_generator

    m = FluxPipeline.from_pretrained(str(tiny_flux_folder)).transformer
    to_pruned(m, []).save_pretrained(str(tmp_path / "assemble" / "transformer"))
    (tmp_path / "export").mkdir()
    export_folder.write_pipeline(tmp_path / "assemble" / "transformer", tiny_flux_folder, tmp_path / "export")
    loaded = []
    real = export_folder.load_pipeline

    def load(folder, **k):
        loaded.append((folder, real(folder, **k)))
        return loaded[-1][1]
    monkeypatch.setattr(export_folder, "load_pipeline", load)
    images = pipeline_generator(tmp_path / "export", 16, 2, 3.5, "cpu")("a photo of a cat", [1])
    assert [f for f, _ in loaded] == [tmp_path / "export"] and images[0].shape == (16, 16, 3)
    pipe = loaded[0][1]  # bfloat16 by default, the pruned transformer included (it is passed in whole)
    assert type(pipe.transformer).__module__ == "fastflux_core.pruned_flux"
    assert pipe.transformer.dtype == pipe.vae.dtype == pipe.text_encoder_2.dtype == torch.bfloat16


def test_a_folder_that_cannot_generate_is_refused_with_its_cause(tmp_path, capsys):
    from fastflux_core.benchmark_images import pipeline_generator

    with pytest.raises(FastFluxError, match=r"no such folder: pass --model .* \(dvc repro export\)"):
        pipeline_generator(tmp_path / "missing", 16, 2, 3.5, "cpu")
    (tmp_path / "embedded" / "transformer").mkdir(parents=True)  # the embedded default's export: no pipeline
    (tmp_path / "embedded" / "transformer" / "config.json").write_text("{}")
    with pytest.raises(FastFluxError, match="an export of the embedded default .* no text encoder or VAE"):
        pipeline_generator(tmp_path / "embedded", 16, 2, 3.5, "cpu")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a cat"}) + "\n")
    with pytest.raises(SystemExit) as exit_:
        main(["geneval", "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"), "--size", "1000"])
    assert exit_.value.code == 2 and "--size 1000: must be a multiple of 16" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
