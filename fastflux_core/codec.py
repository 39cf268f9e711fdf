"""Latent space ↔ images, and FLUX's 2×2 latent packing.

FLUX denoises a latent of shape (B, C, h, w) with h = height / scale_factor, packed into
(B, h/2 · w/2, 4C) tokens. For FLUX.1-dev the codec is its VAE (C = 16, scale_factor = 8); for the
embedded default it is the identity on pixels (C = 1, scale_factor = 1): a digit is 8×8 pixels →
16 tokens of 4 values. Both go through the same packing code, which is diffusers' own.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) → (B, h/2 · w/2, 4C)."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h/2 · w/2, 4C) → (B, C, h, w), h and w in latent cells."""
    return FluxPipeline._unpack_latents(tokens, h, w, 1)


def latent_ids(h: int, w: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rotary position ids of the packed image tokens: (h/2 · w/2, 3)."""
    return FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, device, dtype)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] → uint8 (B, H, W) for C = 1, (B, H, W, C) otherwise."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    x = x.transpose(0, 2, 3, 1)
    return x[..., 0] if x.shape[-1] == 1 else x


class LatentCodec(Protocol):
    latent_channels: int
    scale_factor: int

    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> np.ndarray: ...


class PixelCodec:
    """Identity codec: the latent *is* the image in [-1, 1] (embedded default)."""

    def __init__(self, latent_channels: int):
        self.latent_channels = latent_channels
        self.scale_factor = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        return to_uint8(latents)


class VaeCodec:
    """FLUX's AutoencoderKL: latents are scaled and shifted as in ``FluxPipeline``."""

    def __init__(self, vae: torch.nn.Module):
        self.vae = vae
        self.latent_channels = vae.config.latent_channels
        self.scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def decode_batch(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, C, h, w) latents → (b, 3, H, W) images in [-1, 1] on the VAE's device (the device work)."""
        p = next(self.vae.parameters())
        z = latents.to(p.device, p.dtype) / self.vae.config.scaling_factor + (self.vae.config.shift_factor or 0.0)
        return self.vae.decode(z, return_dict=False)[0]

    def decode(self, latents: torch.Tensor, batch_size: int = 1) -> np.ndarray:
        """Images as uint8, decoded ``batch_size`` at a time (one: a 1024² decode alone takes GiBs)."""
        return np.concatenate([to_uint8(self.decode_batch(latents[s : s + batch_size]))
                               for s in range(0, latents.shape[0], batch_size)])
