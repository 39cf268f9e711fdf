"""The pruned transformers as they are exported (FLUX.1, FLUX.2, SD3, Qwen-Image) — self-contained: imports only torch and diffusers.

This file is copied beside every exported transformer's ``config.json`` (and named there in
``auto_map``), so the export loads without FastFLUX installed, through diffusers' documented
custom-model route::

    from diffusers import AutoModel
    transformer = AutoModel.from_pretrained("./data/export/transformer", trust_remote_code=True)

With FastFLUX installed, ``fastflux_core.export.PrunedFluxTransformer2DModel`` is this class (and
``PrunedFlux2Transformer2DModel`` / ``PrunedSD3Transformer2DModel`` / ``PrunedQwenImageTransformer2DModel``
its FLUX.2, SD3 and Qwen-Image counterparts, the same in every respect below; FLUX.2's and Qwen-Image's
models call their blocks with other arguments, so their stand-ins are the same modules behind those
block signatures).

What it adds to ``FluxTransformer2DModel``: config entries ``replaced_blocks`` / ``deleted_blocks``
(global block indices: double blocks 0..num_layers-1, then single blocks; SD3: its blocks 0..num_layers-1),
whose slots hold a :class:`LinearReplacement` (BRLL: shortcut + one linear, y = x + W·x + b; at the
blocks of ``conditioned_blocks`` timestep-aware, y = x + W·x + b + U·silu(temb)) or a
:class:`SkipBlock` (identity). Block numbering is unchanged, so every kept block's weights keep their
standard keys.

No silent wrong model: diffusers' plain ``FluxTransformer2DModel.from_pretrained`` has no strict mode
— it would build the original blocks, initialise the replaced ones at random and only warn. The one
config entry it validates before building is ``quantization_config``, so an export carries a marker
there whose ``quant_method`` names this class; the plain class stops with "Unknown quantization
type, got fastflux-pruned: … load it with …". This class removes the marker when it reads a config
and writes it back when it saves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers import ModelMixin  # noqa: F401  diffusers checks a passed transformer against this name here
from diffusers.configuration_utils import register_to_config
from torch import nn

# Block kind → the streams its replacement has a linear for (FLUX: double, single; SD3: joint, final —
# SD3's last block outputs no text, so its replacement has none either). fastflux_core.blocks holds the
# same table for the code that needs no diffusers (this file is shipped alone and imports nothing of ours).
STREAMS = {"double": ("img", "txt"), "single": ("joint",), "joint": ("img", "txt"), "final": ("img",)}


def guard(family: str, plain: str, pruned: str) -> dict:
    """The ``quantization_config`` marker that stops the plain class from loading an export."""
    return {
        "quant_method": (
            f"fastflux-pruned: blocks of this {family} transformer are replaced by linear layers (config "
            f"'replaced_blocks'), which {plain} would silently re-create at random. Load it with "
            "diffusers.AutoModel.from_pretrained(folder, trust_remote_code=True) or "
            f"fastflux_core.export.{pruned}.from_pretrained(folder)"
        )
    }


GUARD = guard("FLUX", "FluxTransformer2DModel", "PrunedFluxTransformer2DModel")
MODULE_FILE = "pruned_flux.py"


class LinearReplacement(nn.Module):
    """BRLL block: shortcut + one linear per stream (double, joint), one shared linear (single), or one
    on the image stream of a block without text output (final: returns no text, as the block). Starts at g = 0.

    >>> r = LinearReplacement(dim=4, kind="single")
    >>> enc, hid = r(torch.ones(1, 2, 4), torch.ones(1, 1, 4), temb=None)
    >>> torch.equal(hid, torch.ones(1, 2, 4))  # initialised to the identity: g = 0
    True
    """

    def __init__(self, dim: int, kind: str, conditioned: bool = False):
        super().__init__()
        self.kind = kind
        self.linears = nn.ModuleDict({s: nn.Linear(dim, dim) for s in STREAMS[kind]})
        # timestep-aware (``conditioned_blocks``): g(x, temb) = W·x + b + U·silu(temb), one U per stream
        self.temb_linears = nn.ModuleDict({s: nn.Linear(dim, dim, bias=False) for s in STREAMS[kind]}) if conditioned else None
        for lin in [*self.linears.values(), *(self.temb_linears or {}).values()]:
            nn.init.zeros_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS[self.kind]

    def set_affine(self, stream: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Load g's parameters: ``weight`` (D_out, D_in), ``bias`` (D_out,) — nn.Linear's layout."""
        lin = self.linears[stream]
        with torch.no_grad():
            lin.weight.copy_(weight.to(lin.weight.dtype))
            lin.bias.copy_(bias.to(lin.bias.dtype))

    def set_conditioning(self, stream: str, weight: torch.Tensor) -> None:
        """Load U (D_out, D_in) of a timestep-aware replacement: its term U·silu(temb)."""
        lin = self.temb_linears[stream]
        with torch.no_grad():
            lin.weight.copy_(weight.to(lin.weight.dtype))

    def _g(self, stream: str, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        out = _apply(self.linears[stream], x)  # (B, N, D)
        if self.temb_linears is not None:
            out = out + _apply(self.temb_linears[stream], nn.functional.silu(temb)).to(x.dtype)[:, None, :]  # (B, 1, D)
        return out

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, N_img, D)
        encoder_hidden_states: torch.Tensor,  # (B, N_txt, D)
        temb: torch.Tensor | None = None,  # (B, D)
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if "joint" in self.linears:
            return (encoder_hidden_states + self._g("joint", encoder_hidden_states, temb),
                    hidden_states + self._g("joint", hidden_states, temb))
        hidden_states = hidden_states + self._g("img", hidden_states, temb)
        if "txt" not in self.linears:
            return None, hidden_states
        return encoder_hidden_states + self._g("txt", encoder_hidden_states, temb), hidden_states


def _apply(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """g(x) in the linear's dtype, returned in x's: trainable fp32 linears inside a bf16 model."""
    return linear(x.to(linear.weight.dtype)).to(x.dtype)


class SkipBlock(nn.Module):
    """Stand-in that returns its inputs: the block is removed, shortcut kept (importance ablation,
    the paper's "direct deletion")."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        joint_attention_kwargs: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return encoder_hidden_states, hidden_states


class Flux2DoubleReplacement(LinearReplacement):
    """A double-block :class:`LinearReplacement` as FLUX.2's model calls a double block:
    ``(hidden, encoder, temb_mod_img, temb_mod_txt, rotary, kwargs)`` → ``(encoder, hidden)``; the
    modulation is not read (y = x + W·x + b)."""

    def forward(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        return super().forward(hidden_states, encoder_hidden_states)


class Flux2SingleReplacement(LinearReplacement):
    """A single-block :class:`LinearReplacement` as FLUX.2 calls a single block: the model joins the
    streams once and passes ``encoder_hidden_states=None`` — one (B, N_txt + N_img, D) tensor in, one
    out; with the streams apart (FastFLUX's adapter) ``(encoder, hidden)``. One linear on every token
    either way, so the two agree."""

    def forward(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if encoder_hidden_states is None:
            return hidden_states + self._g("joint", hidden_states, None)
        return super().forward(hidden_states, encoder_hidden_states)


class Flux2DoubleSkip(SkipBlock):
    """:class:`SkipBlock` with FLUX.2's double-block signature."""

    def forward(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        return encoder_hidden_states, hidden_states


class Flux2SingleSkip(SkipBlock):
    """:class:`SkipBlock` with FLUX.2's single-block signature (one joined tensor when the model calls it)."""

    def forward(self, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        return hidden_states if encoder_hidden_states is None else (encoder_hidden_states, hidden_states)


class QwenImageReplacement(LinearReplacement):
    """A double-block :class:`LinearReplacement` as Qwen-Image's model calls a block — by keyword, with
    the text mask, ``temb`` and ``modulate_index`` — → ``(encoder, hidden)``. Qwen-Image hands every block
    ``temb``, so the timestep-aware replacement works here."""

    def forward(self, hidden_states, encoder_hidden_states, encoder_hidden_states_mask=None, temb=None,
                image_rotary_emb=None, joint_attention_kwargs=None, modulate_index=None):
        return super().forward(hidden_states, encoder_hidden_states, temb)


class QwenImageSkip(SkipBlock):
    """:class:`SkipBlock` with Qwen-Image's block signature."""

    def forward(self, hidden_states, encoder_hidden_states, *args, **kwargs):
        return encoder_hidden_states, hidden_states


class PrunedMixin:
    """What the pruned classes share: the stand-ins put in place, and loading and saving — the guard,
    ``auto_map``, the saved dtype, contiguous numbering. A class sets ``GUARD`` and ``_slot(index)``,
    and ``STAND_INS`` (kind → replacement and skip classes) where its model calls blocks otherwise
    than FLUX.1 does."""

    GUARD: dict = {}
    STAND_INS: dict[str, tuple[type, type]] = {}

    def _stand_in(self, replaced, deleted, kind_of, conditioned=()) -> None:
        """A :class:`LinearReplacement` of kind ``kind_of(i)`` at every replaced block (timestep-aware
        at those in ``conditioned``), a :class:`SkipBlock` at every deleted one."""
        for i in replaced:
            modules, pos = self._slot(i)
            cls = self.STAND_INS.get(kind_of(i), (LinearReplacement, SkipBlock))[0]
            modules[pos] = cls(self.inner_dim, kind_of(i), conditioned=i in set(conditioned))
        for i in deleted:
            modules, pos = self._slot(i)
            modules[pos] = self.STAND_INS.get(kind_of(i), (LinearReplacement, SkipBlock))[1]()

    @classmethod
    def load_config(cls, *args, **kwargs):
        """As diffusers', less what only the plain class must see: the guard and ``auto_map``."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if config.get("quantization_config") == cls.GUARD:
            del config["quantization_config"]
        config.pop("auto_map", None)
        return out

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """As diffusers', but without a ``dtype`` the model loads in the dtype it was saved in
        (``weights_dtype`` in its config) rather than diffusers' float32 default: a bfloat16 export
        must not silently become a different, float32 model. A folder saved with contiguous
        numbering is renumbered back while loading (:func:`load_contiguous`)."""
        config = cls.load_config(pretrained_model_name_or_path, subfolder=kwargs.get("subfolder"))
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None and config.get("weights_dtype"):
            kwargs["dtype"] = getattr(torch, config["weights_dtype"])
        if config.get("numbering") == "contiguous":
            folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
            return load_contiguous(cls, folder, config, kwargs.get("dtype") or kwargs.get("torch_dtype"))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, *args, numbering: str = "original", **kwargs) -> None:
        """As diffusers', plus the guard, ``auto_map`` and this file beside the config, so the saved
        folder loads without FastFLUX (``trust_remote_code``) and never as the plain class.
        ``numbering="contiguous"``: kept blocks renumbered 0, 1, … (:func:`save_contiguous`)."""
        folder = Path(save_directory)
        if numbering == "contiguous":
            save_contiguous(self, folder)
        elif numbering == "original":
            super().save_pretrained(save_directory, *args, **kwargs)
        else:
            raise ValueError(f"numbering must be 'original' or 'contiguous', not {numbering!r}")
        path = folder / self.config_name
        config = json.loads(path.read_text())
        config["quantization_config"] = self.GUARD
        config["auto_map"] = {"AutoModel": f"{MODULE_FILE.removesuffix('.py')}.{type(self).__name__}"}
        # the dtype the weights are saved in, whatever the config said when the model was built (a model
        # converted with .to(torch.bfloat16) writes bfloat16 weights): what from_pretrained loads them as
        config["weights_dtype"] = str(next(self.parameters()).dtype).removeprefix("torch.")
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(Path(__file__), folder / MODULE_FILE)
        mask = os.umask(0)
        os.umask(mask)
        for f in folder.iterdir():  # the safetensors writer makes its files 0600; the rest are 0644
            if f.is_file():
                os.chmod(f, 0o666 & ~mask)



class PrunedFluxTransformer2DModel(PrunedMixin, FluxTransformer2DModel):
    """FluxTransformer2DModel with the blocks in ``replaced_blocks`` replaced by BRLL linears and
    those in ``deleted_blocks`` by the identity."""

    GUARD = GUARD

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        replaced_blocks: list[int] | tuple[int, ...] = (),
        deleted_blocks: list[int] | tuple[int, ...] = (),
        weights_dtype: str | None = None,
        conditioned_blocks: list[int] | tuple[int, ...] = (),
    ):
        super().__init__(patch_size, in_channels, out_channels, num_layers, num_single_layers, attention_head_dim,
                         num_attention_heads, joint_attention_dim, pooled_projection_dim, guidance_embeds,
                         axes_dims_rope)
        self._stand_in(replaced_blocks, deleted_blocks, lambda i: "double" if i < num_layers else "single",
                       conditioned_blocks)

    def _slot(self, index: int) -> tuple[nn.ModuleList, int]:
        """The ModuleList and position of global block ``index``."""
        n_double = len(self.transformer_blocks)
        if index < n_double:
            return self.transformer_blocks, index
        return self.single_transformer_blocks, index - n_double

try:  # a diffusers without FLUX.2 still loads FLUX.1 and SD3 exports with this file
    from diffusers import Flux2Transformer2DModel
except ImportError:  # pragma: no cover - diffusers >= 0.36 has it
    Flux2Transformer2DModel = nn.Module


class PrunedFlux2Transformer2DModel(PrunedMixin, Flux2Transformer2DModel):
    """Flux2Transformer2DModel (FLUX.2-dev, FLUX.2-klein) with the blocks in ``replaced_blocks``
    replaced by BRLL linears and those in ``deleted_blocks`` by the identity, behind FLUX.2's block
    signatures. No timestep-aware replacement: FLUX.2's forward hands a block only the shared
    modulation, never the timestep embedding it reads."""

    GUARD = guard("FLUX.2", "Flux2Transformer2DModel", "PrunedFlux2Transformer2DModel")
    STAND_INS = {"double": (Flux2DoubleReplacement, Flux2DoubleSkip), "single": (Flux2SingleReplacement, Flux2SingleSkip)}

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 128,
        out_channels: int | None = None,
        num_layers: int = 8,
        num_single_layers: int = 48,
        attention_head_dim: int = 128,
        num_attention_heads: int = 48,
        joint_attention_dim: int = 15360,
        timestep_guidance_channels: int = 256,
        mlp_ratio: float = 3.0,
        axes_dims_rope: tuple[int, ...] = (32, 32, 32, 32),
        rope_theta: int = 2000,
        eps: float = 1e-6,
        guidance_embeds: bool = True,
        replaced_blocks: list[int] | tuple[int, ...] = (),
        deleted_blocks: list[int] | tuple[int, ...] = (),
        weights_dtype: str | None = None,
        conditioned_blocks: list[int] | tuple[int, ...] = (),
    ):
        if conditioned_blocks:
            raise ValueError(f"conditioned_blocks {list(conditioned_blocks)}: a FLUX.2 block never receives the "
                             "timestep embedding a timestep-aware replacement reads")
        super().__init__(patch_size, in_channels, out_channels, num_layers, num_single_layers, attention_head_dim,
                         num_attention_heads, joint_attention_dim, timestep_guidance_channels, mlp_ratio,
                         tuple(axes_dims_rope), rope_theta, eps, guidance_embeds)
        self._stand_in(replaced_blocks, deleted_blocks, lambda i: "double" if i < num_layers else "single")

    _slot = PrunedFluxTransformer2DModel._slot


class PrunedSD3Transformer2DModel(PrunedMixin, SD3Transformer2DModel):
    """SD3Transformer2DModel (SD3, SD3.5) with the blocks in ``replaced_blocks`` replaced by BRLL
    linears (the last block's on the image stream only) and those in ``deleted_blocks`` by the identity."""

    GUARD = guard("SD3", "SD3Transformer2DModel", "PrunedSD3Transformer2DModel")

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: tuple[int, ...] = (),
        qk_norm: str | None = None,
        replaced_blocks: list[int] | tuple[int, ...] = (),
        deleted_blocks: list[int] | tuple[int, ...] = (),
        weights_dtype: str | None = None,
        conditioned_blocks: list[int] | tuple[int, ...] = (),
    ):
        super().__init__(sample_size, patch_size, in_channels, num_layers, attention_head_dim, num_attention_heads,
                         joint_attention_dim, caption_projection_dim, pooled_projection_dim, out_channels,
                         pos_embed_max_size, tuple(dual_attention_layers), qk_norm)
        self._stand_in(replaced_blocks, deleted_blocks, lambda i: "final" if i == num_layers - 1 else "joint",
                       conditioned_blocks)

    def _slot(self, index: int) -> tuple[nn.ModuleList, int]:
        return self.transformer_blocks, index


try:  # a diffusers without Qwen-Image still loads the other exports with this file
    from diffusers import QwenImageTransformer2DModel
except ImportError:  # pragma: no cover - diffusers >= 0.35 has it
    QwenImageTransformer2DModel = nn.Module


class PrunedQwenImageTransformer2DModel(PrunedMixin, QwenImageTransformer2DModel):
    """QwenImageTransformer2DModel (Qwen-Image) with the blocks in ``replaced_blocks`` replaced by BRLL
    linears and those in ``deleted_blocks`` by the identity, behind Qwen-Image's block signature."""

    GUARD = guard("Qwen-Image", "QwenImageTransformer2DModel", "PrunedQwenImageTransformer2DModel")
    STAND_INS = {"double": (QwenImageReplacement, QwenImageSkip)}

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 64,
        out_channels: int | None = 16,
        num_layers: int = 60,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 3584,
        guidance_embeds: bool = False,
        axes_dims_rope: tuple[int, int, int] = (16, 56, 56),
        zero_cond_t: bool = False,
        use_additional_t_cond: bool = False,
        use_layer3d_rope: bool = False,
        replaced_blocks: list[int] | tuple[int, ...] = (),
        deleted_blocks: list[int] | tuple[int, ...] = (),
        weights_dtype: str | None = None,
        conditioned_blocks: list[int] | tuple[int, ...] = (),
    ):
        # the variant switches only where set: a diffusers from before them (0.35) still loads the export
        variants = {k: v for k, v in (("zero_cond_t", zero_cond_t), ("use_additional_t_cond", use_additional_t_cond),
                                      ("use_layer3d_rope", use_layer3d_rope)) if v}
        super().__init__(patch_size, in_channels, out_channels, num_layers, attention_head_dim, num_attention_heads,
                         joint_attention_dim, guidance_embeds, tuple(axes_dims_rope), **variants)
        self._stand_in(replaced_blocks, deleted_blocks, lambda i: "double", conditioned_blocks)

    def _slot(self, index: int) -> tuple[nn.ModuleList, int]:
        return self.transformer_blocks, index


# Contiguous numbering, for runtimes that infer the depth from the block keys: kept blocks are
# renumbered 0, 1, … within each kind (num_layers / num_single_layers become the kept counts), the
# replaced blocks' linears go to their own file keyed by original global index, and the config keeps
# what is needed to renumber back (numbering, original_num_layers, original_num_single_layers).

REPLACED_FILE = "replaced_blocks.safetensors"
_BLOCK_KEY = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.*)$")


def kept_blocks(n_double: int, n_single: int, removed: set[int]) -> tuple[dict[int, int], dict[int, int]]:
    """Original → contiguous index within each kind, for the blocks kept (``removed``: global indices).

    >>> kept_blocks(3, 2, {1, 3})
    ({0: 0, 2: 1}, {1: 0})
    """
    double = [i for i in range(n_double) if i not in removed]
    single = [j for j in range(n_single) if n_double + j not in removed]
    return {i: k for k, i in enumerate(double)}, {j: k for k, j in enumerate(single)}


def _removed(config) -> set[int]:
    return set(config["replaced_blocks"]) | set(config["deleted_blocks"])


def save_contiguous(model: PrunedMixin, folder: Path) -> None:
    """Write ``model`` with contiguous block numbering: config.json, the kept weights under standard
    names, the replacing linears in ``replaced_blocks.safetensors`` (``<global index>.<stream>.weight``)."""
    from safetensors.torch import save_file

    cfg = model.config
    n_double, n_single = len(model.transformer_blocks), len(getattr(model, "single_transformer_blocks", ()))
    double, single = kept_blocks(n_double, n_single, _removed(cfg))
    kept, replaced = {}, {}
    for key, value in model.state_dict().items():
        m = _BLOCK_KEY.match(key)
        if not m:
            kept[key] = value.contiguous()
            continue
        kind, index, rest = m.group(1), int(m.group(2)), m.group(3)
        renumber = double if kind == "transformer_blocks" else single
        if index in renumber:
            kept[f"{kind}.{renumber[index]}.{rest}"] = value.contiguous()
        else:  # a LinearReplacement: linears.<stream>.<weight|bias> (and temb_linears.<stream>.weight, kept so)
            global_index = index if kind == "transformer_blocks" else n_double + index
            replaced[f"{global_index}.{rest.removeprefix('linears.')}"] = value.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(kept, str(folder / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    save_file(replaced, str(folder / REPLACED_FILE), metadata={"format": "pt"})
    config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    config.update(_class_name=type(model).__name__, numbering="contiguous", num_layers=len(double),
                  original_num_layers=n_double)
    if "num_single_layers" in config:  # FLUX; SD3 has one kind of block
        config.update(num_single_layers=len(single), original_num_single_layers=n_single)
    (folder / model.config_name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_contiguous(cls, folder: Path, config: dict, dtype: torch.dtype | None) -> PrunedMixin:
    """Load a folder written by :func:`save_contiguous` into the original block layout."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    n_double, n_single = config.pop("original_num_layers"), config.pop("original_num_single_layers", None)
    config.pop("numbering")
    config.update(num_layers=n_double)
    if n_single is not None:
        config.update(num_single_layers=n_single)
    double, single = kept_blocks(n_double, n_single or 0, _removed(config))
    back = {("transformer_blocks", k): i for i, k in double.items()}
    back.update({("single_transformer_blocks", k): j for j, k in single.items()})
    state = {}
    for key, value in load_file(str(folder / "diffusion_pytorch_model.safetensors")).items():
        m = _BLOCK_KEY.match(key)
        state[key if not m else f"{m.group(1)}.{back[(m.group(1), int(m.group(2)))]}.{m.group(3)}"] = value
    for key, value in load_file(str(folder / REPLACED_FILE)).items():
        index, rest = key.split(".", 1)
        index = int(index)
        kind, pos = ("transformer_blocks", index) if index < n_double else ("single_transformer_blocks", index - n_double)
        state[f"{kind}.{pos}.{rest}" if rest.startswith("temb_linears.") else f"{kind}.{pos}.linears.{rest}"] = value
    with init_empty_weights():
        model = cls.from_config(config)
    model.load_state_dict(state, strict=True, assign=True)
    return (model.to(dtype) if dtype is not None else model).eval()


def _register_with_diffusers() -> None:
    """Let diffusers' block hooks (layer skip, caching, group offloading) accept the stand-in blocks."""
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

    for cls in (LinearReplacement, SkipBlock, Flux2DoubleReplacement, Flux2DoubleSkip, QwenImageReplacement,
                QwenImageSkip):
        TransformerBlockRegistry.register(
            model_class=cls,
            metadata=TransformerBlockMetadata(return_hidden_states_index=1, return_encoder_hidden_states_index=0),
        )
    for cls in (Flux2SingleReplacement, Flux2SingleSkip):  # one joined tensor, as Flux2SingleTransformerBlock
        TransformerBlockRegistry.register(
            model_class=cls,
            metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
        )


_register_with_diffusers()
