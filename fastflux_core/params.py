"""The one schema for params.yaml.

Every stage loads its parameters through :func:`load_params`, so a typo, a wrong type or an
out-of-range value stops the stage *before* it writes anything, with an error that names the key.

>>> s = {"file": "prompts.txt"}
>>> required = {"prompts": dict(calibration=s, training=s, evaluation=s, importance=s),
...             "importance": {"blocks": [0, 1, 2]}}
>>> p = parse_params({"ratio": 0.1, **required})
>>> p.ratio, p.model.source, p.importance.alpha
(0.1, 'embedded', 0.5)
>>> try:
...     parse_params({"ratoi": 0.1, **required})
... except ParamsError as err:
...     print(err)
invalid parameters in params:
  ratoi: unknown key
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastflux_core.errors import ParamsError


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(_Strict):
    """Which base model is pruned.

    ``embedded``: the small FluxTransformer2DModel that stage ``base`` trains on digits.
    ``flux``: a local diffusers folder in FLUX.1-dev's layout (``model_index.json``, ``transformer/``,
    ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``vae/``, ``scheduler/``).
    """

    source: Literal["embedded", "flux"] = "embedded"
    path: Path | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")

    @model_validator(mode="after")
    def _path_matches_source(self) -> "ModelParams":
        if self.source == "flux" and self.path is None:
            raise ValueError("model.path is required when model.source is 'flux'")
        if self.source == "embedded" and self.path is not None:
            raise ValueError("model.path must be null when model.source is 'embedded' (stage base builds it)")
        return self


class EmbeddedParams(_Strict):
    """The embedded default base: architecture and rectified-flow training (used by stage ``base``)."""

    num_layers: int = Field(4, ge=1, description="double-stream blocks")
    num_single_layers: int = Field(8, ge=1, description="single-stream blocks")
    num_attention_heads: int = Field(2, ge=1)
    attention_head_dim: int = Field(32, ge=4)
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    train_steps: int = Field(1500, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    judge_steps: int = Field(400, ge=1, description="training steps of the digit classifier")
    eval_images_per_prompt: int = Field(10, ge=1, description="images per evaluation prompt for prompt accuracy")

    @model_validator(mode="after")
    def _rope_fits_head(self) -> "EmbeddedParams":
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(
                f"embedded.axes_dims_rope must sum to embedded.attention_head_dim "
                f"({sum(self.axes_dims_rope)} != {self.attention_head_dim})"
            )
        if any(d % 2 for d in self.axes_dims_rope):
            raise ValueError("embedded.axes_dims_rope entries must be even")
        return self


class TextParams(_Strict):
    """Text conditioning. ``max_sequence_length``: text tokens per prompt (T5 for FLUX, MiniLM here)."""

    max_sequence_length: int = Field(8, ge=1, le=512)
    batch_size: int = Field(16, ge=1)


class PromptSet(_Strict):
    """One prompt set: a text file (one prompt a line) and how many seeded images per prompt."""

    file: Path
    images_per_prompt: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)


class PromptParams(_Strict):
    calibration: PromptSet
    training: PromptSet
    evaluation: PromptSet
    importance: PromptSet


class SamplingParams(_Strict):
    """Generation settings shared by every stage that makes images."""

    height: int = Field(8, ge=2)
    width: int = Field(8, ge=2)
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(3.5, ge=0, description="FLUX distilled guidance; unused if the model has none")
    batch_size: int = Field(64, ge=1)


class ImportanceParams(_Strict):
    """Block importance (paper §3.2, Eq. 2) and the order in which blocks are replaced."""

    blocks: list[int] = Field(description="one ablate stage per entry: every block index of the model, 0..N-1")
    method: Literal["fid_clip", "proxy"] = Field(
        "fid_clip", description="fid_clip: Eq. 2 from FID and alignment; proxy: final-latent error only (fewer images)"
    )
    alpha: float = Field(0.5, ge=0, description="weight of FID in Eq. 2")
    beta: float = Field(0.5, ge=0, description="weight of the CLIP-style alignment in Eq. 2")
    order: Literal["importance", "start2end", "end2start"] = "importance"
    fid_against: Literal["model", "real"] = Field("model", description="FID against the full model's images or real images")
    proxy_images_per_prompt: int = Field(2, ge=1, description="images per prompt when method is proxy")

    @model_validator(mode="after")
    def _blocks_are_a_range(self) -> "ImportanceParams":
        if sorted(self.blocks) != list(range(len(self.blocks))) or not self.blocks:
            raise ValueError("importance.blocks must list every block index 0..N-1 exactly once")
        if self.alpha + self.beta == 0:
            raise ValueError("importance.alpha + importance.beta must be > 0")
        return self


class MetricsParams(_Strict):
    """How image quality is measured (see fastflux_core/metrics.py)."""

    fid_features: Literal["judge", "inception"] = "judge"
    alignment: Literal["judge", "clip"] = "judge"
    inception_path: Path | None = Field(None, description="folder holding clean-fid's inception-2015-12-05.pt")
    clip_path: Path | None = Field(None, description="local CLIP model folder (transformers CLIPModel)")
    real_images: Literal["digits"] | Path | None = Field(
        "digits", description="real images for FID: 'digits' (scikit-learn's), a folder of images, or null"
    )
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _paths_present(self) -> "MetricsParams":
        if self.fid_features == "inception" and self.inception_path is None:
            raise ValueError("metrics.inception_path is required when metrics.fid_features is 'inception'")
        if self.alignment == "clip" and self.clip_path is None:
            raise ValueError("metrics.clip_path is required when metrics.alignment is 'clip'")
        return self


class Params(_Strict):
    """Top level of params.yaml. ``ratio`` is top-level so that ``dvc exp run -S ratio=0.15`` works."""

    ratio: float = Field(0.15, ge=0.0, lt=1.0, description="share of blocks replaced in the exported model")
    seed: int = Field(0, ge=0)
    model: ModelParams = ModelParams()
    embedded: EmbeddedParams = EmbeddedParams()
    text: TextParams = TextParams()
    prompts: PromptParams
    sampling: SamplingParams = SamplingParams()
    importance: ImportanceParams
    metrics: MetricsParams = MetricsParams()

    @model_validator(mode="after")
    def _fid_reference_exists(self) -> "Params":
        if self.importance.fid_against == "real" and self.metrics.real_images is None:
            raise ValueError("importance.fid_against is 'real' but metrics.real_images is null")
        return self


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"invalid parameters in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_params(data: object, source: str = "params") -> Params:
    """Validate a mapping (as read from YAML) into :class:`Params`, raising :class:`ParamsError`."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source} must be a mapping at the top level, got {type(data).__name__}")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml. Raises :class:`ParamsError` naming the offending key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse_params(data, str(path))
