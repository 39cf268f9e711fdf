"""The one schema for params.yaml: a pydantic section per stage concern, and the whole file.

Reading the file is :mod:`fastflux_core.params_file` (:func:`~fastflux_core.params_file.read_params`:
YAML, then this schema, so a typo, a wrong type or an out-of-range value stops a stage *before* it
writes anything, with an error that names the key); what needs more than the file — the model
folder, the device, the prompt files — is :func:`fastflux_core.preflight.load_params`, which stages
call. Which keys a stage reads is recorded from outside, by the deps check's tracer
(tests/trace_params/sitecustomize.py). This module imports nothing of FastFLUX's.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key must not silently fall back to a default. Numbers and
    switches are taken exactly: pydantic would turn ``train_steps: yes`` (a YAML boolean) into 1 and
    ``reuse: "no"`` into False; here both are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_silent_coercion(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            kind = field.annotation if field is not None else None
            kinds = get_args(kind) if get_origin(kind) in (Union, UnionType) else (kind,)  # float | None, …
            words = [w for k in kinds if get_origin(k) is Literal for w in get_args(k)]  # e.g. "auto"
            if any(k in (int, float) for k in kinds) and isinstance(value, (bool, str)) and value not in words:
                also = "".join(f" or {w}" for w in words)
                raise ValueError(f"{name} must be a number{also}, not {value!r} (yes/no/true/false are booleans in YAML)")
            if kind is bool and not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, not {value!r}")
        return data


class ModelParams(_Strict):
    """Which base model is pruned.

    ``embedded``: the small transformer (``embedded.family``: FLUX or SD3) that stage ``base`` trains on digits.
    ``flux``: a local diffusers folder in FLUX.1-dev's layout (``model_index.json``, ``transformer/``,
    ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``vae/``, ``scheduler/``).
    ``sd3``: a local diffusers SD3 / SD3.5 folder (the same, plus ``text_encoder_3/``, ``tokenizer_3/``).
    ``flux2``: a local diffusers FLUX.2 folder (``Flux2Pipeline`` or ``Flux2KleinPipeline``: ``transformer/``,
    ``text_encoder/``, ``tokenizer/``, ``vae/``, ``scheduler/``).
    ``qwenimage``: a local diffusers Qwen-Image folder (``QwenImagePipeline``: the same sub-folders, its
    text encoder Qwen2.5-VL, its VAE the 3-D ``AutoencoderKLQwenImage``).
    """

    source: Literal["embedded", "flux", "sd3", "flux2", "qwenimage"] = "embedded"
    path: Path | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    gpu_memory_gb: float = Field(22.0, gt=0, description="device memory one stage may use (GiB); stages offload "
                                 "transformer blocks to fit it (python -m fastflux_core.budget shows each stage)")
    offload: Literal["auto", "never", "always"] = Field(
        "auto", description="auto: offload transformer blocks only when the stage would not fit gpu_memory_gb")

    @model_validator(mode="after")
    def _path_matches_source(self) -> "ModelParams":
        if self.source != "embedded" and self.path is None:
            raise ValueError(f"model.path is required when model.source is {self.source!r}")
        if self.source == "embedded" and self.path is not None:
            raise ValueError("model.path must be null when model.source is 'embedded' (stage base builds it)")
        return self


class EmbeddedFluxParams(_Strict):
    """The embedded base as a FLUX transformer (``FluxTransformer2DModel``)."""

    num_layers: int = Field(4, ge=1, description="double-stream blocks")
    num_single_layers: int = Field(8, ge=1, description="single-stream blocks")
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)


class EmbeddedFlux2Params(_Strict):
    """The embedded base as a FLUX.2 transformer (``Flux2Transformer2DModel``: shared modulation,
    SwiGLU MLPs, four rotary axes)."""

    num_layers: int = Field(2, ge=1, description="double-stream blocks (FLUX.2-dev: 8)")
    num_single_layers: int = Field(10, ge=1, description="single-stream blocks (FLUX.2-dev: 48)")
    axes_dims_rope: tuple[int, int, int, int] = (8, 8, 8, 8)


class EmbeddedSD3Params(_Strict):
    """The embedded base as an SD3 transformer (``SD3Transformer2DModel``; SD3.5 with the last two)."""

    num_layers: int = Field(12, ge=2, description="joint blocks (the last one has no text output)")
    pos_embed_max_size: int = Field(8, ge=4, description="largest latent grid side, in patches")
    dual_attention_layers: list[int] = Field([], description="SD3.5: blocks with a second image self-attention")
    qk_norm: Literal["rms_norm"] | None = Field(None, description="SD3.5: rms_norm")


class EmbeddedQwenImageParams(_Strict):
    """The embedded base as a Qwen-Image transformer (``QwenImageTransformer2DModel``)."""

    num_layers: int = Field(12, ge=1, description="double-stream blocks (Qwen-Image: 60)")
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)


class EmbeddedParams(_Strict):
    """The embedded default base: architecture and rectified-flow training (used by stage ``base``)."""

    family: Literal["flux", "flux2", "sd3", "qwenimage"] = Field("flux", description="the architecture the base is built as")
    flux: EmbeddedFluxParams = EmbeddedFluxParams()
    flux2: EmbeddedFlux2Params = EmbeddedFlux2Params()
    sd3: EmbeddedSD3Params = EmbeddedSD3Params()
    qwenimage: EmbeddedQwenImageParams = EmbeddedQwenImageParams()
    num_attention_heads: int = Field(2, ge=1)
    attention_head_dim: int = Field(32, ge=4)
    train_steps: int = Field(1500, ge=1)
    batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    judge_steps: int = Field(400, ge=1, description="training steps of the digit classifier")
    eval_images_per_prompt: int = Field(10, ge=1, description="images per digit caption in the base model's sample "
                                        "check (prompt accuracy, samples.png)")
    seed: int = Field(0, ge=0, description="the base's and the judge's training seed (the top-level seed is the "
                      "pruning's, so experiments over seeds prune one base)")

    @model_validator(mode="after")
    def _architecture_fits(self) -> "EmbeddedParams":
        if self.family in ("flux", "flux2", "qwenimage"):
            rope = getattr(self, self.family).axes_dims_rope
            if sum(rope) != self.attention_head_dim:
                raise ValueError(
                    f"embedded.{self.family}.axes_dims_rope must sum to embedded.attention_head_dim "
                    f"({sum(rope)} != {self.attention_head_dim})"
                )
            if any(d % 2 for d in rope):
                raise ValueError(f"embedded.{self.family}.axes_dims_rope entries must be even")
        bad = [i for i in self.sd3.dual_attention_layers if not 0 <= i < self.sd3.num_layers]
        if self.family == "sd3" and bad:
            raise ValueError(f"embedded.sd3.dual_attention_layers {bad} are not blocks 0..{self.sd3.num_layers - 1}")
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
    """The four prompt sets, kept disjoint as in the paper: least squares is fitted on ``calibration``,
    sandwiches are trained on ``training``, blocks are ranked on ``importance`` and models are scored
    on ``evaluation``. ``disjoint: prompts`` (default) forbids any prompt text in two sets;
    ``disjoint: items`` only forbids the same (prompt text, seed) in two sets."""

    calibration: PromptSet
    training: PromptSet
    evaluation: PromptSet
    importance: PromptSet
    disjoint: Literal["prompts", "items"] = "prompts"


class SamplingParams(_Strict):
    """Generation settings shared by every stage that makes images."""

    height: int = Field(8, ge=2)
    width: int = Field(8, ge=2)
    steps: int = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(3.5, ge=0, description="FLUX's distilled guidance (a model input); the embedded "
                                  "base has none and ignores it; a FLUX / FLUX.2 folder without guidance embedding "
                                  "and SD3 / Qwen-Image folders must set 1.0 (their guidance is true_cfg_scale)")
    true_cfg_scale: float = Field(1.0, ge=1.0, le=100.0, description="classifier-free guidance: > 1 runs every "
                                  "denoising call twice, with the prompt and with negative_prompt, and combines "
                                  "them as the family's pipeline does (SD3/SD3.5's guidance_scale, Qwen-Image's "
                                  "true_cfg_scale); 1.0: off")
    negative_prompt: str = Field("", max_length=2000, description="the unconditional prompt of classifier-free "
                                 "guidance (the pipelines' default: empty)")
    batch_size: int = Field(64, ge=1)

    @property
    def cfg(self) -> bool:
        """Whether classifier-free guidance runs: every sample has an unconditional twin."""
        return self.true_cfg_scale > 1.0

    @property
    def calls(self) -> int:
        """Transformer calls per denoising step and item: two with classifier-free guidance, else one."""
        return 2 if self.cfg else 1

    @property
    def negative(self) -> str | None:
        """The prompt the unconditional calls encode: ``negative_prompt`` with guidance, None without."""
        return self.negative_prompt if self.cfg else None


class ImportanceParams(_Strict):
    """Block importance (paper §3.2, Eq. 2) and the order in which blocks are replaced."""

    blocks: list[int] = Field(description="one ablate stage per entry: every block index of the model, 0..N-1")
    method: Literal["fid_clip", "proxy"] = Field(
        "fid_clip", description="fid_clip: Eq. 2 from FID and alignment; proxy: final-latent error only (fewer images)"
    )
    alpha: float = Field(0.5, ge=0, le=1e6, description="weight of FID in Eq. 2 (relative to beta)")
    beta: float = Field(0.5, ge=0, le=1e6, description="weight of the CLIP-style alignment in Eq. 2 (relative to alpha)")
    order: Literal["importance", "start2end", "end2start"] = "importance"
    fid_against: Literal["model", "real"] = Field("model", description="FID against the full model's images or real images")
    proxy_images_per_prompt: int = Field(2, ge=1, description="images per prompt when method is proxy")
    steps: int | None = Field(None, ge=1, le=1000, description="sampling steps of the importance set "
                              "(reference@importance and every ablate stage); null: sampling.steps")
    height: int | None = Field(None, ge=2, description="image height of the importance set; null: sampling.height")
    width: int | None = Field(None, ge=2, description="image width of the importance set; null: sampling.width")

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
    hps_python: Path | None = Field(
        None, description="HPS v2 on the evaluation set: the Python interpreter of a separate environment with "
        "hpsv2 installed (its pinned packages stay out of ours; fastflux_core/preference.py)")
    hps_checkpoint: Path | None = Field(None, description="local HPS v2 / v2.1 checkpoint (.safetensors, or a "
                                        "tensors-only .pt such as HPS_v2.1_compressed.pt)")
    hps_version: Literal["v2.0", "v2.1"] = Field(
        "v2.1", description="which HPS checkpoint hps_checkpoint is (same architecture): named in records and model cards")
    imagereward_python: Path | None = Field(
        None, description="ImageReward v1.0 on the evaluation set: the Python of a separate environment with "
        "image-reward installed (fastflux_core/preference.py)")
    imagereward_checkpoint: Path | None = Field(None, description="local ImageReward.pt (tensors-only) or .safetensors")
    imagereward_config: Path | None = Field(None, description="its med_config.json (beside ImageReward.pt on the hub)")
    lpips_backbone: Path | None = Field(
        None, description="LPIPS against the base model's images: torchvision's AlexNet weights "
        "(alexnet-owt-7be5be79.pth, tensors-only, or .safetensors); torchmetrics ships LPIPS's own linear layers")

    @model_validator(mode="after")
    def _paths_present(self) -> "MetricsParams":
        if self.fid_features == "inception" and self.inception_path is None:
            raise ValueError("metrics.inception_path is required when metrics.fid_features is 'inception'")
        if self.alignment == "clip" and self.clip_path is None:
            raise ValueError("metrics.clip_path is required when metrics.alignment is 'clip'")
        if (self.hps_python is None) != (self.hps_checkpoint is None):
            raise ValueError("metrics.hps_python and metrics.hps_checkpoint go together: set both for HPS v2, or neither")
        ir = (self.imagereward_python, self.imagereward_checkpoint, self.imagereward_config)
        if any(x is None for x in ir) and any(x is not None for x in ir):
            raise ValueError("metrics.imagereward_python, imagereward_checkpoint and imagereward_config go together: "
                             "set all three for ImageReward, or none")
        return self


class Step(_Strict):
    """One pruning step of the progressive chain (its number is the key in ``steps``): it builds on
    the state after step ``prev``."""

    prev: int = Field(ge=0)


class CaptureParams(_Strict):
    """What stage ``capture`` records (paper §3.1: input and residual output of the block replaced)."""

    inputs: Literal["trajectory", "noised"] = Field(
        "trajectory", description="trajectory (the paper's: the model at step k generates every item through the "
        "whole schedule, recorded at the captured steps) | noised (the model at step k gets "
        "x_t = (1 − σ_t)·x_0 + σ_t·ε at each captured step, x_0 the full model's final latent of the item — stage "
        "endpoints, made once — and ε its starting noise: one forward per captured step, stopped after block i)")
    timesteps: int = Field(4, ge=1, description="schedule steps captured, spread evenly from the first to the last")
    image_tokens: int = Field(16, ge=1, description="image tokens per sample kept for least squares")
    text_tokens: int = Field(8, ge=1, description="text tokens per sample kept for least squares")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="bfloat16 is stored as uint16 bits")
    shard_samples: int = Field(32, ge=1, description="samples per Zarr shard (one shard is buffered in memory)")
    chunk_samples: int = Field(32, ge=1, description="samples per chunk of the calibration store, which solve "
                               "streams whole (the training store: one sample per chunk, read by index)")
    compression: Literal["none", "lz4", "zstd"] = Field(
        "none", description="Blosc codec per chunk, CRC32C always (measured: benchmarks/capture_io.py)")
    clevel: int = Field(1, ge=0, le=9, description="Blosc compression level")

    @model_validator(mode="after")
    def _chunks_fit_shards(self) -> "CaptureParams":
        if self.shard_samples % self.chunk_samples:
            raise ValueError("capture.shard_samples must be a multiple of capture.chunk_samples")
        return self


class SolveParams(_Strict):
    """What replaces a pruned block: its least-squares linear (paper Eq. 1), or nothing."""

    replacement: Literal["brll", "delete"] = Field(
        "brll", description="brll: residual branch → least-squares linear, shortcut kept (paper §3.1); delete: "
        "residual branch removed, the block is the identity (paper Fig. 6's 'direct deletion')")
    condition: Literal["none", "temb"] = Field(
        "none", description="none: g(x) = W·x + b (paper) | temb: timestep-aware, g(x, temb) = W·x + b + U·silu(temb) "
        "with the block's own timestep embedding (beyond the paper; one more D×D matrix per stream)")
    ridge: float = Field(1e-4, ge=0, description="ridge λ, relative to the mean diagonal of XᵀX")
    chunk_rows: int = Field(65536, ge=1, description="rows read from the store at a time")


def _rate_or_auto(v: float | str) -> float | str:
    if v != "auto" and not 0 < v <= 1:
        raise ValueError(f"must be auto or a number in (0, 1], got {v}")
    return v


def _distinct_rates(v: list[float]) -> list[float]:
    if not v or any(not 0 < r <= 1 for r in v) or len(set(v)) != len(v):
        raise ValueError(f"must be distinct numbers in (0, 1], at least one, got {v}")
    return sorted(v)


# A learning rate, or "auto" (tried from a grid: fastflux_core.training); the grid itself.
Rate = Annotated[Union[float, Literal["auto"]], AfterValidator(_rate_or_auto)]
Rates = Annotated[list[float], AfterValidator(_distinct_rates)]


class SandwichParams(_Strict):
    """Sandwich Training (paper §3.2): width 1 (no LoRA), 3 (one unpruned neighbour each side), 5 (two)."""

    train: bool = Field(True, description="false: no Sandwich Training — each step keeps its replacement as "
                        "solved and the chain goes on from it (paper Fig. 6's 'w/o ST', its own chain)")
    width: Literal[1, 3, 5] = 3
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    target: Literal["current", "original"] = Field(
        "current", description="train towards the current model's sandwich output (paper) or the original model's")
    train_steps: int = Field(200, ge=0)
    batch_size: int = Field(32, ge=1, description="samples per optimizer step")
    micro_batch: int = Field(8, ge=1, description="samples per forward/backward; gradients accumulate to batch_size")
    round_samples: int = Field(128, ge=1, description="samples whose boundary states are recomputed and held in "
                               "host memory at once (FLUX.1-dev, bf16: 57 MB per sample); the held-out check keeps "
                               "as many more, and the next round is computed while the last is still held")
    gradient_checkpointing: bool = Field(True, description="keep only block inputs for backward (diffusers')")
    learning_rate: Rate = Field(
        1e-3, description="AdamW rate, or auto: each step tries every rate of probe_rates for probe_steps steps "
        "from the same start and trains with the one whose held-out loss ends lowest")
    probe_rates: Rates = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3],
                                     description="the rates learning_rate: auto tries")
    probe_steps: int = Field(20, ge=1, description="steps of each try of learning_rate: auto")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of training-set prompts held out to measure the loss")
    eval_every: int = Field(20, ge=0, description="steps between held-out checks (0: only after the last step); "
                            "the state kept is the one at the lowest held-out loss, the least-squares start included")
    patience: int | None = Field(3, ge=1, description="stop after this many checks without a new best "
                                 "(null: run every train_steps)")
    reuse: bool = Field(True, description="assemble ratio a from the latest-trained components of the whole chain")


class FinishParams(_Strict):
    """The optional global finisher (beyond the paper; :mod:`fastflux_core.finish`): after the chain, the
    model at ``ratio`` — its replaced linears and LoRA — distilled towards the base model's outputs."""

    steps: int = Field(0, ge=0, description="AdamW steps of sandwich.batch_size samples (0: off, the paper's "
                       "method); the L1 baseline gets as many on top of the sandwiches'")
    learning_rate: Rate = Field("auto", description="AdamW rate, or auto: the probe of the sandwiches "
                                "(sandwich.probe_steps) over probe_rates")
    probe_rates: Rates = Field(default_factory=lambda: [1e-5, 3e-5, 1e-4, 3e-4],
                               description="the rates learning_rate: auto tries")
    micro_batch: int = Field(32, ge=1, description="samples per forward/backward, accumulated to "
                             "sandwich.batch_size (FLUX.1-dev: 1)")


class EvaluateParams(_Strict):
    """Stage ``evaluate``: held-out quality, latency and FLOPs of the assembled model."""

    latency_warmup: int = Field(3, ge=0)
    latency_repeats: int = Field(20, ge=1)
    sweep: bool = Field(True, description="also evaluate every chain length 0..K (quality/latency vs ratio plot)")
    sweep_lengths: list[int] | None = Field(
        None, description="the chain lengths (blocks replaced) the sweep evaluates, e.g. [0, 3, 6, 11]; null: every "
        "n = 0..K. A length beyond the chain is an error")
    sweep_items: int | None = Field(
        None, ge=2, description="the sweep's evaluation items: the first this many (items are round-major: every "
        "prompt's first seed, then every prompt's second, …), scored against the full model's images of the same "
        "items; null: all")
    grid_rows: int = Field(10, ge=1)
    bootstrap: int = Field(1000, ge=0, description="resamples of the evaluation items for the intervals of "
                           "per-image scores (0: none)")
    fid_intervals: bool = Field(True, description="jackknife intervals of the FID readings: 4 Fréchet distances per "
                                "evaluation image (stats.frechet_distance: an n × n SVD when n images < F features)")


class ExportParams(_Strict):
    """Stage ``export``: the pipeline folder (``data/export``)."""

    numbering: Literal["original", "contiguous"] = Field(
        "original", description="original: blocks keep FLUX's indices (transformer/ links to data/assemble's) | "
        "contiguous: kept blocks renumbered 0, 1, … for runtimes that count blocks (a rewritten copy)")


class BaselineParams(_Strict):
    """Stage ``baseline``: the paper's L1-norm width-pruning baseline (Tables 1–2), matched to our
    models' FLOPs at ``ratios`` and fine-tuned with the sandwiches' budget (:mod:`fastflux_core.width`).
    Off unless ``ratios`` names some: it fine-tunes whole models, the report's ``baseline`` experiment
    turns it on."""

    ratios: list[float] = Field(default_factory=list, description="ratios whose FastFLUX model is matched "
                                "(each <= max_ratio; e.g. [0.1, 0.2]); empty: the stage does nothing")
    finetune: Literal["full", "lora", "lora_matched"] = Field(
        "full", description="full (every weight, the paper's L1 setting; AdamW needs ~16 bytes per parameter) "
        "| lora (LoRA of sandwich.lora_rank on every block linear: what fits one card at FLUX.1-dev scale) "
        "| lora_matched (LoRA on every block linear at the rank whose parameters fit FastFLUX's own trainable "
        "count: the same budget in parameters as in steps)")
    objective: Literal["global", "local"] = Field(
        "global", description="global (distil the transformer's output towards the base's: the paper's L1 "
        "fine-tuning, and FastFLUX's finisher) | local (each block's output given the base's input to it: the kind "
        "of loss FastFLUX's sandwiches train on), so a comparison can hold the objective fixed")
    learning_rate: Rate = Field(
        "auto", description="AdamW rate, or auto: tries every rate of probe_rates for sandwich.probe_steps steps and "
        "fine-tunes with the one whose held-out loss ends lowest (the sandwiches' selection: sandwich.eval_every, "
        "sandwich.patience)")
    probe_rates: Rates = Field(default_factory=lambda: [3e-5, 1e-4, 3e-4, 1e-3],
                                     description="the rates learning_rate: auto tries")
    round_to: int = Field(8, ge=1, description="kept MLP width is a multiple of this (FLUX.1-dev: e.g. 64)")
    latency_flops_cut: float | None = Field(
        None, gt=0, description="also build an L1 model matched on latency: it removes this multiple of the FLOPs "
        "FastFLUX removes — the multiple at which, at FLUX.1-dev's width, the two are equally fast "
        "(python benchmarks/latency_match.py measures it; scripts/report.sh passes it); null: FLOPs-matched only")
    micro_batch: int = Field(32, ge=1, description="samples per forward/backward; gradients accumulate to "
                             "sandwich.batch_size (FLUX.1-dev: 1)")
    gradient_checkpointing: bool = Field(False, description="keep only block inputs for backward (FLUX.1-dev: true)")

    @field_validator("ratios")
    @classmethod
    def _ratios_in_range(cls, v: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in v) or len(set(v)) != len(v):
            raise ValueError(f"must be distinct values in (0, 1), got {v}")
        return sorted(v)


class Params(_Strict):
    """Top level of params.yaml. ``ratio`` is top-level so that ``dvc exp run -S ratio=0.15`` works."""

    ratio: float = Field(0.15, ge=0.0, lt=1.0, description="share of blocks replaced in the exported model")
    max_ratio: float = Field(0.25, ge=0.0, lt=1.0, description="the progressive chain is trained up to this ratio")
    steps: dict[int, Step] = Field(default_factory=dict, description="the chain written out for DVC: k = 1..n(max_ratio)")
    seed: int = Field(0, ge=0, description="seed of everything pruning draws: captured tokens, LoRA init, sandwich "
                      "batches and hold-out (the embedded base has its own, embedded.seed)")
    model: ModelParams = ModelParams()
    embedded: EmbeddedParams = EmbeddedParams()
    text: TextParams = TextParams()
    prompts: PromptParams
    sampling: SamplingParams = SamplingParams()
    importance: ImportanceParams
    metrics: MetricsParams = MetricsParams()
    capture: CaptureParams = CaptureParams()
    solve: SolveParams = SolveParams()
    sandwich: SandwichParams = SandwichParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    baseline: BaselineParams = BaselineParams()
    finish: FinishParams = FinishParams()

    @field_validator("steps", mode="before")
    @classmethod
    def _step_keys_are_strings(cls, v: object) -> object:
        if isinstance(v, dict) and any(not isinstance(k, str) for k in v):
            raise ValueError('keys must be quoted ("1": {prev: 0}): DVC silently drops a foreach over integer keys')
        return v

    @model_validator(mode="after")
    def _chain_matches_max_ratio(self) -> "Params":
        n = n_replaced(self.max_ratio, len(self.importance.blocks))
        want = {k: {"prev": k - 1} for k in range(1, n + 1)}
        if {k: s.model_dump() for k, s in self.steps.items()} != want:
            chain = ", ".join(f'"{k}": {{prev: {k - 1}}}' for k in range(1, n + 1))
            raise ValueError(
                f"steps must write out the chain for max_ratio={self.max_ratio} ({n} of "
                f"{len(self.importance.blocks)} blocks; DVC cannot compute it): steps: {{{chain}}}"
            )
        if self.ratio > self.max_ratio:
            raise ValueError(
                f"ratio={self.ratio} is above max_ratio={self.max_ratio}: raise max_ratio (and steps) to train "
                f"the chain that far, then run dvc repro"
            )
        above = [r for r in self.baseline.ratios if r > self.max_ratio]
        if above:
            raise ValueError(f"baseline.ratios {above} are above max_ratio={self.max_ratio}: the baseline is matched "
                             f"to the FastFLUX model at each ratio, which the chain must reach")
        none = [r for r in self.baseline.ratios if n_replaced(r, len(self.importance.blocks)) == 0]
        if none:
            raise ValueError(f"baseline.ratios {none} replace no block of {len(self.importance.blocks)}: "
                             f"nothing to match")
        if self.capture.timesteps > self.sampling.steps:
            raise ValueError(f"capture.timesteps ({self.capture.timesteps}) must be <= sampling.steps "
                             f"({self.sampling.steps}): each captured step is a distinct step of the schedule")
        return self

    @model_validator(mode="after")
    def _no_silent_guidance(self) -> "Params":
        if self.model.source in ("sd3", "qwenimage") and self.sampling.guidance_scale != 1.0:
            raise ValueError(
                f"sampling.guidance_scale={self.sampling.guidance_scale} with model.source: {self.model.source}: "
                f"sampling.guidance_scale is FLUX's distilled guidance, which this model does not take — set "
                f"sampling.guidance_scale: 1.0 and its classifier-free guidance as sampling.true_cfg_scale "
                f"(the pipeline's guidance_scale for SD3/SD3.5, true_cfg_scale for Qwen-Image)")
        return self

    @model_validator(mode="after")
    def _what_flux2_cannot_do_yet(self) -> "Params":
        if self.model.source == "flux2":
            which = "model.source: flux2"
        elif self.model.source == "embedded" and self.embedded.family == "flux2":
            which = "embedded.family: flux2"
        else:
            return self
        if self.solve.condition == "temb":
            raise ValueError(f"solve.condition: temb with {which}: a FLUX.2 block never receives the "
                             "timestep embedding the timestep-aware replacement reads — set solve.condition: none")
        if self.baseline.ratios:
            raise ValueError(f"baseline.ratios with {which}: the L1 width baseline cannot prune FLUX.2's "
                             "fused SwiGLU MLPs yet — set baseline.ratios: []")
        return self

    @model_validator(mode="after")
    def _sandwich_has_something_to_train(self) -> "Params":
        if self.sandwich.train and self.sandwich.width == 1 and self.solve.replacement == "delete":
            raise ValueError("solve.replacement 'delete' with sandwich.width 1 leaves Sandwich Training nothing to "
                             "train (no linear, no neighbour): use sandwich.width 3 or 5, or sandwich.train: false")
        return self

    @model_validator(mode="after")
    def _sweep_within_the_chain(self) -> "Params":
        e, k = self.evaluate, len(self.steps)
        bad = [n for n in e.sweep_lengths or [] if not 0 <= n <= k]
        if bad:
            raise ValueError(f"evaluate.sweep_lengths {bad} are not chain lengths: the chain (steps) has 0..{k} "
                             f"blocks replaced; list only those")
        return self

    @model_validator(mode="after")
    def _fid_reference_exists(self) -> "Params":
        if self.importance.fid_against == "real" and self.metrics.real_images is None:
            raise ValueError("importance.fid_against is 'real' but metrics.real_images is null")
        return self


def importance_sampling(params: "Params") -> SamplingParams:
    """The sampling settings of the importance set: ``sampling`` with ``importance.steps``, ``height``
    and ``width`` where given. Ranking blocks needs their relative harm, not final-quality images, so
    fewer steps and a lower resolution rank them at a fraction of the cost (benchmarks/importance_cost.py
    measures how well)."""
    imp, s = params.importance, params.sampling
    return s.model_copy(update={"steps": imp.steps or s.steps, "height": imp.height or s.height,
                                "width": imp.width or s.width})


def capture_schedule(count: int, steps: int) -> list[int]:
    """Schedule indices captured: ``count`` distinct steps spread evenly from the first to the last,
    so least squares and sandwiches see the whole denoising trajectory whatever ``steps`` is.

    >>> capture_schedule(4, 20), capture_schedule(4, 28), capture_schedule(1, 20), capture_schedule(3, 3)
    ([0, 6, 13, 19], [0, 9, 18, 27], [0], [0, 1, 2])
    """
    if not 1 <= count <= steps:
        raise ValueError(f"cannot capture {count} distinct steps of a {steps}-step schedule")
    if count == 1:
        return [0]
    return [round(i * (steps - 1) / (count - 1)) for i in range(count)]


def n_replaced(ratio: float, n_blocks: int) -> int:
    """Blocks replaced at ``ratio``: floor(ratio · N) — never more than the requested share.

    >>> [n_replaced(r, 57) for r in (0.05, 0.10, 0.15, 0.20, 0.25, 0.30)]
    [2, 5, 8, 11, 14, 17]
    """
    return int(ratio * n_blocks + 1e-9)
