"""Checks that need more than params.yaml itself: the model folder, the device, image sizes the
model and the metrics can take, the prompt files the judge reads, the real-images folder.

:func:`load_params` runs them after the schema (:func:`fastflux_core.params_file.read_params`) and the
prompt sets' disjointness, so every stage — and the ``validate`` stage that ``dvc repro`` runs first,
every time — refuses a setup that would fail later (a prompt the judge cannot read used to fail after
every image had been generated). Stage ``validate`` then checks the run's resources
(:mod:`fastflux_core.resources`). Each failure is one :class:`FastFluxError` line naming the key or
file and what to do. Light on purpose — torch at most, no diffusers — since ``validate`` runs on
every ``dvc repro``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from fastflux_core.errors import FastFluxError, ModelFolderError
from fastflux_core.layouts import layout
from fastflux_core.params import importance_sampling
from fastflux_core.params_file import read_params
from fastflux_core.placement import check_device
from fastflux_core.prompts import check_disjoint, label_of, read_prompt_file

if TYPE_CHECKING:
    from fastflux_core.params import ModelParams, Params, PromptParams, SamplingParams

FLUX_CONFIGS = {  # sub-folder → a config file diffusers/transformers needs there
    "transformer": "config.json", "scheduler": "scheduler_config.json", "vae": "config.json",
    "text_encoder": "config.json", "text_encoder_2": "config.json",
    "tokenizer": "tokenizer_config.json", "tokenizer_2": "tokenizer_config.json",
}
SD3_CONFIGS = {**FLUX_CONFIGS, "text_encoder_3": "config.json", "tokenizer_3": "tokenizer_config.json"}
# one text encoder (Mistral Small 3.1 and its processor, or Qwen3 and its tokenizer)
FLUX2_CONFIGS = {"transformer": "config.json", "scheduler": "scheduler_config.json", "vae": "config.json",
                 "text_encoder": "config.json", "tokenizer": "tokenizer_config.json"}
# Qwen2.5-VL and its tokenizer: the same sub-folders as FLUX.2's
QWENIMAGE_CONFIGS = FLUX2_CONFIGS
# model.source → (a pattern model_index.json's pipeline class matches, the family's name, what it needs in the folder);
# Qwen-Image's editing, img2img, inpainting and ControlNet pipelines feed the transformer more than a prompt: not matched
FOLDERS = {"flux": (r"^Flux(?!2)", "FLUX", FLUX_CONFIGS), "flux2": (r"^Flux2", "FLUX.2", FLUX2_CONFIGS),
           "sd3": (r"^StableDiffusion3", "SD3", SD3_CONFIGS),
           "qwenimage": (r"^QwenImagePipeline$", "Qwen-Image", QWENIMAGE_CONFIGS)}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
JUDGE_SIZE = 8  # the embedded default's digit judge reads 8×8 images


def read_config(path: Path, what: str) -> dict:
    """A JSON config of a model folder, or :class:`ModelFolderError` saying which and why."""
    if not path.is_file():
        raise ModelFolderError(f"{what}: missing {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{what}: {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{what}: {path} must hold a JSON object")
    return data


def check_model_folder(path: Path, source: str) -> None:
    """Fail with one clear message if ``path`` is not a diffusers folder of ``source``'s family (FLUX,
    FLUX.2, SD3 or Qwen-Image) with every component."""
    marker, label, configs = FOLDERS[source]
    if not path.exists():
        raise ModelFolderError(f"model.path does not exist: {path}")
    if not path.is_dir():
        raise ModelFolderError(f"model.path is not a directory: {path}")
    if not (path / "model_index.json").is_file():
        raise ModelFolderError(f"not a diffusers pipeline folder (missing model_index.json): {path}")
    index = read_config(path / "model_index.json", "model.path")
    cls = index.get("_class_name", "")
    if not isinstance(cls, str) or not re.match(marker, cls):
        known = next((s for s, (m, _, _) in FOLDERS.items() if isinstance(cls, str) and re.match(m, cls)), None)
        hint = f": set model.source: {known}" if known else ""
        raise ModelFolderError(f"{path / 'model_index.json'} describes a {cls or 'unknown'} pipeline, not a {label} one "
                               f"(model.source: {source}){hint}")
    for sub, config in configs.items():
        if not (path / sub).is_dir():
            raise ModelFolderError(f"{label} folder {path} lacks its {sub}/ sub-folder")
        if sub.startswith("tokenizer") and not any((path / sub).iterdir()):
            raise ModelFolderError(f"{label} folder {path}: {sub}/ is empty")
        if not sub.startswith("tokenizer"):
            read_config(path / sub / config, f"{label} folder {path}")
    weights = list((path / "transformer").glob("*.safetensors"))
    if not weights:
        raise ModelFolderError(f"no safetensors weights in {path / 'transformer'} (pickled weights are not loaded)")


def pixels_per_latent_cell(model: "ModelParams") -> int:
    """Image pixels per side of one latent cell: the VAE's downsampling (its family's
    :meth:`~fastflux_core.layouts.FluxLayout.vae_scale_factor`) for a model folder, 1 for the embedded default, which diffuses pixels directly."""
    if model.source == "embedded":
        return 1
    assert model.path is not None
    vae = read_config(model.path / "vae" / "config.json", "model folder")
    return layout(model.source).vae_scale_factor(vae)


def check_sizes(params: "Params") -> None:
    """Height and width must pack into 2×2 latent cells exactly (FluxPipeline silently rounds them
    down, which would score a different image size than the one asked for), and least squares cannot
    sample more tokens per sample than a sequence has (no silent clamping)."""
    multiple = 2 * pixels_per_latent_cell(params.model)
    s, imp = params.sampling, params.importance
    for key, value in (("sampling.height", s.height), ("sampling.width", s.width),
                       ("importance.height", imp.height), ("importance.width", imp.width)):
        if value is not None and value % multiple:
            raise FastFluxError(f"{key}={value} must be a multiple of {multiple} for this model "
                                f"(2×2 packing of {multiple // 2}-pixel latent cells), e.g. {value - value % multiple or multiple}")
    n_img, n_txt = (s.height // multiple) * (s.width // multiple), params.text.max_sequence_length
    cap = params.capture
    if cap.image_tokens > n_img:
        raise FastFluxError(f"capture.image_tokens={cap.image_tokens} exceeds the {n_img} image tokens of a "
                            f"{s.height}×{s.width} image: lower it (or raise sampling.height/width)")
    if cap.text_tokens > n_txt:
        raise FastFluxError(f"capture.text_tokens={cap.text_tokens} exceeds the {n_txt} text tokens of a prompt "
                            f"(text.max_sequence_length): lower it")


def check_metrics(params: "Params") -> None:
    """The configured metrics can score the configured images and prompts, before any is generated."""
    m = params.metrics
    uses_judge = "judge" in (m.fid_features, m.alignment)
    if uses_judge and params.model.source != "embedded":
        raise FastFluxError(f"metrics use the digit judge, which only the embedded base has: for {params.model.source} set "
                            "metrics.fid_features: inception and metrics.alignment: clip")
    imp = importance_sampling(params)
    for what, (h, w) in (("sampling", (params.sampling.height, params.sampling.width)),
                         ("the importance set (importance.height/width)", (imp.height, imp.width))):
        if uses_judge and (h, w) != (JUDGE_SIZE, JUDGE_SIZE):
            raise FastFluxError(f"the digit judge reads {JUDGE_SIZE}×{JUDGE_SIZE} images, but {what} is {h}×{w}: "
                                f"set it to {JUDGE_SIZE} or use metrics.fid_features: inception and metrics.alignment: clip")
    if m.alignment == "judge":
        for name in ("importance", "evaluation"):
            file = getattr(params.prompts, name).file
            for line, prompt in enumerate(read_prompt_file(file), 1):
                try:
                    label_of(prompt)
                except ValueError:
                    raise FastFluxError(f"{file}: prompt {line} ({prompt!r}) names no single digit, so the judge "
                                        f"cannot score it: name exactly one digit (0-9 or zero..nine)") from None
    for key, folder, wanted in (("inception_path", m.inception_path, "inception-2015-12-05.pt"),
                                ("clip_path", m.clip_path, "config.json")):
        if folder is not None and not (Path(folder) / wanted).is_file():
            raise FastFluxError(f"metrics.{key}: {Path(folder) / wanted} not found")
    for kind, package, files in (("hps", "hpsv2", ("checkpoint",)), ("imagereward", "image-reward", ("checkpoint", "config"))):
        python = getattr(m, f"{kind}_python")
        if python is None:
            continue
        if not (Path(python).is_file() and os.access(python, os.X_OK)):
            raise FastFluxError(f"metrics.{kind}_python: {python} is not an executable file (the Python of an "
                                f"environment with {package} installed)")
        for f in files:
            if not Path(getattr(m, f"{kind}_{f}")).is_file():
                raise FastFluxError(f"metrics.{kind}_{f}: {getattr(m, f'{kind}_{f}')} not found")
    if m.lpips_backbone is not None and not Path(m.lpips_backbone).is_file():
        raise FastFluxError(f"metrics.lpips_backbone: {m.lpips_backbone} not found (torchvision's AlexNet weights, "
                            f"alexnet-owt-7be5be79.pth or a .safetensors of the same tensors)")
    if m.real_images not in (None, "digits"):
        folder = Path(m.real_images)
        if not folder.is_dir():
            raise FastFluxError(f"metrics.real_images folder not found: {folder}")
        n = sum(1 for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if n < 2:
            raise FastFluxError(f"metrics.real_images folder {folder} holds {n} images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                f"FID needs at least 2")


def check(params: "Params") -> None:
    """Every check above, cheapest first."""
    check_device(params.model.device)
    if params.model.source != "embedded":
        assert params.model.path is not None
        check_model_folder(params.model.path, params.model.source)
        check_guidance(params.model, params.sampling)
    check_sizes(params)
    check_metrics(params)


def check_guidance(model: "ModelParams", sampling: "SamplingParams") -> None:
    """A folder model without guidance embedding (SD3, Qwen-Image, FLUX.2-klein, FLUX.1-schnell) takes
    no distilled guidance: a ``sampling.guidance_scale`` other than 1 would be silently ignored —
    refused, naming the key that guides such a model (``sampling.true_cfg_scale``, classifier-free)."""
    config = read_config(model.path / "transformer" / "config.json", "model folder")
    if not config.get("guidance_embeds", False) and sampling.guidance_scale != 1.0:
        raise FastFluxError(f"sampling.guidance_scale={sampling.guidance_scale}, but {model.path} has no "
                            f"guidance embedding (distilled guidance: FLUX.1-dev, FLUX.2-dev): set "
                            f"sampling.guidance_scale: 1.0, and for classifier-free guidance sampling.true_cfg_scale "
                            f"(e.g. 3.5 for SD3.5-large, 4.0 for Qwen-Image)")


def prompt_counts(prompts: "PromptParams", assumed: dict[str, int]) -> dict[str, int]:
    """Prompts per set: from the prompt files when they exist, else ``assumed`` (the budget's guess
    for a run whose prompt files are not written yet)."""
    out = {}
    for name in ("calibration", "training", "importance", "evaluation"):
        f = getattr(prompts, name).file
        out[name] = len(read_prompt_file(f)) if Path(f).is_file() else assumed[name]
    return out


def load_params(path: str | Path = "params.yaml") -> "Params":
    """Read and validate params.yaml: the schema (:func:`fastflux_core.params_file.read_params`), then that
    the prompt sets are disjoint and the setup can run (:func:`check`: model folder, device, image
    size, metrics). Raises a :class:`FastFluxError` (one line) naming the offending key or file."""
    params = read_params(path)
    check_disjoint(params.prompts)
    check(params)
    return params
