"""LoRA on sandwich neighbours, through peft (paper Fig. 3).

One LoRA adapter per block, on that block's attention projections and MLP linears (not its AdaLN
modulation; the family adapter names them: ``lora_targets``). peft injects it with a regex over module
names that matches only the chosen blocks, so the rest of the model stays plain. A block keeps one
adapter for the whole chain: a later sandwich that reaches it again continues training it.

If a block that carries LoRA is later replaced by a linear, its adapter is dropped: the linear is
fitted to that block's input/output *as the model then runs it* (adapter included), so nothing the
adapter learned is lost from the function the linear approximates.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from fastflux_core.blocks import BlockAdapter


def target_regex(adapter: BlockAdapter, blocks: list[int]) -> str:
    """A regex that fullmatches exactly the LoRA target linears of ``blocks``."""
    alts = []
    for i in sorted(blocks):
        ref = adapter.blocks[i]
        names = "|".join(re.escape(t) for t in adapter.lora_targets(i))
        alts.append(f"{re.escape(ref.path)}\\.(?:{names})")
    return "^(?:" + "|".join(alts) + ")$"


def inject_lora(adapter: BlockAdapter, blocks: list[int], rank: int, alpha: float, seed: int) -> dict:
    """Add a fresh LoRA adapter (B = 0, so the model's function is unchanged) to ``blocks``.

    peft draws A (Kaiming-uniform) from torch's global generator; it is forked and seeded with
    ``seed`` here, so the initialisation is reproducible and leaves the caller's random state alone.
    Returns the config as a dict, to be saved with the state."""
    config = {"r": rank, "lora_alpha": alpha, "target_modules": target_regex(adapter, blocks)}
    if blocks:
        device = next(adapter.model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            adapter.model.add_adapter(LoraConfig(**config, init_lora_weights=True))
    return config


def lora_tensors(adapter: BlockAdapter, blocks: list[int]) -> dict[int, dict[str, torch.Tensor]]:
    """{block: {name relative to the block: tensor}} of the LoRA weights on ``blocks``."""
    if not blocks:
        return {}
    sd = get_peft_model_state_dict(adapter.model)
    out: dict[int, dict[str, torch.Tensor]] = {}
    for i in blocks:
        prefix = adapter.blocks[i].path + "."
        out[i] = {k[len(prefix):]: v.detach().cpu() for k, v in sd.items() if k.startswith(prefix)}
    return out


def load_lora(adapter: BlockAdapter, tensors: dict[int, dict[str, torch.Tensor]]) -> None:
    """Set LoRA weights (after :func:`inject_lora` on a superset of their blocks)."""
    sd = {f"{adapter.blocks[i].path}.{k}": v for i, named in tensors.items() for k, v in named.items()}
    if sd:
        result = set_peft_model_state_dict(adapter.model, sd)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"LoRA weights did not fit the model: {unexpected[:3]}")


def lora_parameters(adapter: BlockAdapter, blocks: list[int]) -> list[torch.nn.Parameter]:
    """The trainable LoRA parameters of ``blocks``."""
    params = []
    for i in blocks:
        for module in adapter.block(i).modules():
            if isinstance(module, BaseTunerLayer):
                params += [p for n, p in module.named_parameters() if "lora_" in n]
    return params
