"""FastFLUX: block-wise pruning of FLUX-class diffusion transformers (arXiv 2506.10035).

Every module, by layer, bottom first. A module imports only modules of its own layer or of the layers
below it — imports inside functions and type-only imports included — and the import graph has no
cycle (tests/test_layers.py checks both against this list; ``python tests/layers.py`` draws the
graph). What a stage computes lives in layers 1–5; the tools of layer 6 are imported by no stage, so
editing them re-runs no stage (dvc.yaml lists each stage's import closure as its code deps).

1. foundations — what everything else is built of
    errors        user-fixable errors; integrity of what a stage reads (damaged files, NaN, digests)
    params        the one schema for params.yaml
    params_file   reading params.yaml: YAML without duplicate keys, then the schema; one error line
    io            atomic outputs, verified safetensors and JSON, CSV, PNG, stage timings
    blocks        the block-level interface to a transformer (BlockAdapter, BlockState, ModelInputs)
    pruned_flux   the exported pruned transformers and the BRLL block (self-contained: ships with exports)
    codec         latents ↔ images (VAE or pixels), token packing
    chat_template a prompt's tokens as a chat-template pipeline (FLUX.2, Qwen-Image) counts and cuts them
    lstsq         streamed least squares (paper Eq. 1)
    stats         bootstrap and jackknife intervals, the Fréchet distance
    speed         FLOPs (torch's counter) and A B B A latency
    published     the published component configs of FLUX.1-dev, FLUX.2-dev, SD3.5-large, Qwen-Image

2. runtime — devices, processes, prompts, stores
    placement     the device a run uses; resident or offloaded weights (asks the estimator, layer 6,
                  in its own process)
    stage         how a stage runs: its arguments, its processes (World), errors → exit 2, timing
    prompts       prompt sets, items (prompt, seed), derived seeds, encoded sets, the digit a prompt names
    store         sharded Zarr activation stores and the arrays capture@k writes
    digits        the embedded default's data (scikit-learn digits) and its judge
    preference    HPS v2 / v2.1 and ImageReward, each scored by a worker in the user's own environment for it

3. model families — one module per family, and the registry
    layouts       what a transformer config says without diffusers: each family's block layout, channels,
                  text tokens, class names, which published configs, the embedded base's config
    flux          FLUX.1 (FluxTransformer2DModel): adapter, text encoders
    flux2         FLUX.2 (Flux2Transformer2DModel: dev, klein): adapter on FLUX.1's layout, text encoder, VAE codec
    sd3           SD3 / SD3.5 (SD3Transformer2DModel): adapter, text encoders
    qwenimage     Qwen-Image (QwenImageTransformer2DModel): adapter on FLUX.1's double-block kind, text mask
    families      which family a model, config or name belongs to, and its adapter
    lora          peft LoRA on sandwich neighbours (paper Fig. 3)

4. loading, generation, measurement
    preflight     params.yaml checked against the world: model folder, device, sizes, metrics, prompt files
    source        where the base model comes from (embedded default or a model folder); loaders
    text          text encoders and encoding a prompt set
    shapes        sizes of a run without a model: configs, sequence lengths, store bytes
    sampling      seeded flow-matching generation
    metrics       FID (clean-fid or the judge's features), CLIP-style alignment, preference scores
    fidelity      each image against the base's from the same noise: PSNR, SSIM, LPIPS (torchmetrics)
    export        loading an assembled pruned model back

5. the method — what the stages compute
    embedded      the small default base and its training (stage base)
    reference     the full model's images of a prompt set (stage reference); generation and scoring
                  every later stage shares
    ablation      one block removed, generated, measured (stage ablate)
    importance    Eq. 2, replacement orders, the latent-error proxy (stage rank)
    chain         the progressive chain: plan, sandwich bounds (Eq. 3), chain states, solved linears
    chain_model   the base as it stands after a chain state: LoRA and linears in place
    capture       activation capture along trajectories or from noised endpoints (stages endpoints, capture@k)
    solve         BRLL: the replacing linear by least squares (stage solve@k)
    training      what sandwiches, the finisher and the baseline share: data, rounds, keep-best, rate probe
    boundary      the sandwich's boundary states, recomputed; the sandwich as one module, its micro-step
    sandwich      Sandwich Training (stage sandwich@k): preparing, fitting, keeping the best
    distill       distillation towards the base, global or block by block
    finish        the optional global finisher of the model at a ratio
    assemble      the model at a ratio from the chain, saved (stage assemble)
    evaluation    held-out quality and speed of a pruned model (stage evaluate)
    sweep         every chain length scored (stage sweep)
    width         the L1-norm width-pruning baseline (stage baseline)
    export_folder the diffusers pipeline folder around the pruned transformer (stage export)
    model_card    the export's README.md
    resources     will the run fit: disk for the stores, device memory (stage validate)

6. tools — for people, on top of everything; no stage imports them
    fake_gpu      a CUDA device that is not there: fake tensors, their peak memory
    stage_peaks   each stage's device code on the fake GPU: peak memory, FLOPs
    budget        the memory / disk / time table of every stage (``fastflux budget``)
    experiments   the paper's experiments as DVC experiments
    verdicts      how the report decides a claim: paired tests over runs, intervals over prompts
    figures       the report's plots and images read from an experiment's revision
    report        report/README.md from the experiments
    store_info    what an activation store holds (``fastflux inspect``)
    lora_compat   existing FLUX LoRAs on a pruned export (``fastflux lora``)
    follow        the other nodes of a multi-node run
    rehearsal     the FLUX-width rehearsal folder
    partiprompts  four disjoint, category-balanced prompt sets from PartiPrompts
    benchmark_images  GenEval / DPG-Bench images in their evaluators' layouts
    cli           the ``fastflux`` command
"""

import logging as _logging

# Where torchao is installed, importing diffusers' models imports it: torchao's import logs torch's
# deprecation of register_constant on Enums, and diffusers that some torchao tensor types are missing.
# Neither is about anything FastFLUX does, and on stderr they would bury a command's one-line error.
# Log levels only: nothing here changes an output, so no stage lists this file among its deps.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
_logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").setLevel(_logging.ERROR)
