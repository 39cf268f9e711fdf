"""FastFLUX: block-wise pruning of FLUX-class diffusion transformers (arXiv 2506.10035).

Modules, by the paper's concepts (the README's layout section says the same, with the stages):
    params       the one schema for params.yaml (and the disjointness check of the prompt sets)
    preflight    checks beyond the schema: model folder, device, image size, metrics, prompt files
    adapter      block-level view of the transformer: list, run ranges, skip, swap blocks
    source       where the base model comes from (embedded default or a FLUX.1-dev folder)
    text         text encoders;  prompts: prompt sets, items (prompt, seed), derived seeds
    codec        latents ↔ images;  sampling: seeded flow-matching generation
    embedded     the small default base and its training;  digits: its data and judge
    metrics      FID through clean-fid, CLIP-style alignment
    ablation     remove one block, generate, measure (importance's raw data); reference images
    importance   Eq. 2, replacement orders, the latent-error proxy
    replacement  the BRLL block (shortcut + linear);  pruned_flux: the exported model's own code
                 (self-contained: it ships beside every export, for loading without FastFLUX)
    chain        the progressive chain: plan, sandwich bounds (Eq. 3), chain state
    store        sharded Zarr activation stores;  capture: the hooks that fill them
    lstsq        streamed least squares (Eq. 1);  brll: per-block solve and the "w/o ST" model
    lora         peft LoRA on sandwich neighbours;  sandwich: Sandwich Training
    export       the diffusers-loadable pruned model;  export_folder: the pipeline folder around it
    assemble     the model at a ratio from the chain
    model_card   the export's README.md;  lora_compat: existing FLUX LoRAs on a pruned export
    store_info   what an activation store holds;  cli: the `fastflux` command
    evaluation   held-out quality of pruned models;  speed: FLOPs and latency
    io           atomic outputs, verified safetensors and JSON, PNG, timings, how a stage runs
    integrity    damaged inputs and the stage that re-makes them, finiteness, tensor digests
    errors       user-fixable errors (one line, exit status 2)
"""
