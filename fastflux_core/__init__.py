"""FastFLUX: block-wise pruning of FLUX-class diffusion transformers (arXiv 2506.10035).

Modules, by the paper's concepts:
    params     the one schema for params.yaml
    adapter    block-level view of the transformer: list, run ranges, skip, swap blocks
    source     where the base model comes from (embedded default or a FLUX.1-dev folder)
    text       text encoders; prompts: prompt sets and their encoded form
    codec      latents ↔ images; sampling: seeded flow-matching generation
    embedded   the small default base and its training; digits: its data and judge
    metrics    FID through clean-fid, CLIP-style alignment
    ablation   remove one block, generate, measure (importance's raw data)
    importance Eq. 2, replacement orders, the latent-error proxy
    io         atomic outputs, safetensors, PNG
"""
