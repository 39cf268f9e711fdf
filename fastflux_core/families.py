"""Which model family a transformer, a config or a name belongs to, and its block adapter.

The registry above the families: each family module (:mod:`fastflux_core.flux`,
:mod:`fastflux_core.flux2`, :mod:`fastflux_core.sd3`, :mod:`fastflux_core.qwenimage`) implements
:class:`fastflux_core.blocks.BlockAdapter` and knows nothing of the others — but FLUX.2, which keeps FLUX.1's block layout and builds on its
adapter; this module lists them. What a family's config says without diffusers (names, block layout,
channels, the embedded base's config) is its layout (:mod:`fastflux_core.layouts`), which its adapter
subclasses. A new family is one more module, one more layout and one more entry in :data:`ADAPTERS`.

>>> family("sd3").model_class.__name__, family_of_config({"_class_name": "FluxTransformer2DModel"}).family
('SD3Transformer2DModel', 'flux')
"""

from __future__ import annotations

from torch import nn

from fastflux_core.blocks import BlockAdapter
from fastflux_core.flux import FluxAdapter
from fastflux_core.flux2 import Flux2Adapter
from fastflux_core.layouts import layout_of_config
from fastflux_core.qwenimage import QwenImageAdapter
from fastflux_core.sd3 import SD3Adapter

ADAPTERS: dict[str, type] = {"flux": FluxAdapter, "flux2": Flux2Adapter, "sd3": SD3Adapter,
                             "qwenimage": QwenImageAdapter}
FAMILIES = tuple(ADAPTERS)


def family(name: str) -> type:
    """The adapter class of a family by name (``model.source`` / ``embedded.family``)."""
    if name in ADAPTERS:
        return ADAPTERS[name]
    raise ValueError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})")


def family_of_config(config: dict) -> type:
    """The adapter class for a transformer config (its ``_class_name``, pruned exports included)."""
    return family(layout_of_config(config).family)


def adapter_for(model: nn.Module) -> BlockAdapter:
    """The block adapter for a transformer; stages call this, never a concrete class."""
    for f in FAMILIES:
        cls = family(f)
        if isinstance(model, cls.model_class):
            return cls(model)
    raise TypeError(f"no block adapter for {type(model).__name__} "
                    f"(supported: {', '.join(family(f).model_class.__name__ for f in FAMILIES)})")
