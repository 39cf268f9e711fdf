"""Which model family a transformer, a config or a name belongs to, and its block adapter.

The registry above the families: each family module (:mod:`fastflux_core.flux`,
:mod:`fastflux_core.flux2`, :mod:`fastflux_core.sd3`) implements :class:`fastflux_core.blocks.BlockAdapter`
and knows nothing of the others — but FLUX.2, which keeps FLUX.1's block layout and builds on its
adapter; this module lists them. A new family (Qwen-Image) is one more module and one more entry in
:data:`ADAPTERS`.

>>> family("sd3").model_class.__name__, family_of_config({"_class_name": "FluxTransformer2DModel"}).family
('SD3Transformer2DModel', 'flux')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from fastflux_core.blocks import BlockAdapter
from fastflux_core.flux import FluxAdapter
from fastflux_core.flux2 import Flux2Adapter
from fastflux_core.sd3 import SD3Adapter

if TYPE_CHECKING:
    from fastflux_core.params import EmbeddedParams

ADAPTERS: dict[str, type] = {"flux": FluxAdapter, "flux2": Flux2Adapter, "sd3": SD3Adapter}
FAMILIES = tuple(ADAPTERS)


def family(name: str) -> type:
    """The adapter class of a family by name (``model.source`` / ``embedded.family``)."""
    if name in ADAPTERS:
        return ADAPTERS[name]
    raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")


def family_of_config(config: dict) -> type:
    """The adapter class for a transformer config (its ``_class_name``, pruned exports included)."""
    name = str(config.get("_class_name", ""))
    for f in FAMILIES:
        cls = family(f)
        if name in (cls.model_class.__name__, cls.pruned_class):
            return cls
    raise ValueError(f"no block adapter for a transformer of class {name!r}")


def adapter_for(model: nn.Module) -> BlockAdapter:
    """The block adapter for a transformer; stages call this, never a concrete class."""
    for f in FAMILIES:
        cls = family(f)
        if isinstance(model, cls.model_class):
            return cls(model)
    raise TypeError(f"no block adapter for {type(model).__name__} "
                    f"(supported: {', '.join(family(f).model_class.__name__ for f in FAMILIES)})")


# What the embedded base is trained on (stage base): digits (one grey channel, diffused as pixels) and
# MiniLM's 384-wide token and pooled embeddings.
EMBEDDED_LATENT_CHANNELS, EMBEDDED_TEXT_DIMS = 1, (384, 384)


def embedded_transformer_config(cfg: EmbeddedParams, latent_channels: int, text_dims: tuple[int, int]) -> dict:
    """The transformer arguments of the embedded base (its family's, ``embedded.family``), for
    ``latent_channels``-channel latents and text of widths ``text_dims`` (tokens, pooled); with the
    class name, as diffusers writes it into config.json."""
    cls = family(cfg.family)
    return {"_class_name": cls.model_class.__name__, **cls.embedded_config(cfg, latent_channels, text_dims)}
