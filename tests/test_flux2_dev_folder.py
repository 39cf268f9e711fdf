"""A FLUX.2-dev folder (Flux2Pipeline: Mistral 3 behind a Pixtral processor, distilled guidance) through
the code a real one goes through: its prompts encoded as the pipeline encodes them, counted and cut
inside its chat template after the system message, and sampled as the pipeline samples with its
guidance embedding (issue 31). The klein folder's own tests are in test_flux2_folder.py."""

import numpy as np
import torch
from diffusers import Flux2Pipeline
from diffusers.pipelines.flux2.pipeline_flux2 import format_input
from test_flux2_folder import _flux2_params

from fastflux_core import preflight, source, text
from fastflux_core.flux2 import Flux2TextEncoder
from fastflux_core.prompts import prompt_items
from fastflux_core.sampling import initial_noise, latent_size, sample_latents
from fastflux_core.text import encode_prompts

CPU = torch.device("cpu")


def test_prompts_are_encoded_and_counted_as_flux2pipeline_does(tiny_flux2_dev_folder):
    """The stacked hidden states of layers 10, 20, 30 equal the pipeline's own encode_prompt, and the
    cut tokenizer counts each prompt as the processor's attention mask does (system turn included)."""
    preflight.check_model_folder(tiny_flux2_dev_folder, "flux2")
    enc = Flux2TextEncoder(tiny_flux2_dev_folder, 64, CPU, torch.float32)
    prompts = ["a cat", "the digit 7 drawn in ink"]
    ours = enc.encode(prompts)[0]
    theirs = enc.pipe.encode_prompt(prompt=prompts, device=CPU, max_sequence_length=64)[0]
    assert ours.shape == (2, 64, 24) and torch.equal(ours, theirs.float())
    mask = enc.pipe.tokenizer.apply_chat_template(format_input(prompts=prompts), add_generation_prompt=False, tokenize=True,
                                                  return_dict=True, return_tensors="pt", padding="max_length",
                                                  truncation=True, max_length=64)["attention_mask"]
    assert mask.sum(1).tolist() == [len(enc.cut_tokenizer(p)["input_ids"]) for p in prompts]


def test_a_prompt_is_cut_where_the_system_message_leaves_it_room(tiny_flux2_dev_folder, capsys):
    """FLUX.2-dev's long system message counts against text.max_sequence_length: a prompt keeps what
    the limit leaves after it, the warning names what is kept, and the encoder sees exactly that."""
    enc = Flux2TextEncoder(tiny_flux2_dev_folder, 64, CPU, torch.float32)
    room = 64 - len(enc.cut_tokenizer("")["input_ids"])  # the template alone
    assert 0 < room < 64 - 20  # the system message takes most of the 64 tokens
    prompt = " ".join(["red"] * (room + 5))
    cut = text.check_cut(enc, [prompt, "a cat"], "set z", digits=False)
    assert cut == {prompt: " ".join(["red"] * room)}
    assert "1 of 2 prompts are longer than text.max_sequence_length (64 tokens)" in capsys.readouterr().err
    long, kept = enc.encode([prompt, cut[prompt]])[0]
    assert torch.equal(long, kept)


@torch.no_grad()
def test_sampler_equals_flux2pipeline_with_its_guidance_embedding(tiny_flux2_dev_folder):
    """FLUX.2-dev's distilled guidance: our sampler at sampling.guidance_scale 4 is Flux2Pipeline's
    loop at guidance_scale 4 on the same noise (and differs from guidance 1: the embedding is read)."""
    params = _flux2_params(tiny_flux2_dev_folder, guidance_scale=4.0)
    preflight.check_guidance(params.model, params.sampling)
    pipe = Flux2Pipeline.from_pretrained(str(tiny_flux2_dev_folder))
    room = params.text.model_copy(update={"max_sequence_length": 48})  # the system message takes ~34 tokens
    embeds = encode_prompts(text.load_text_encoder(params.model, room), ["a red cube", "a blue sphere"], batch_size=2)
    items = prompt_items(2, 1, 7)
    codec = source.load_codec(params.model, pipe.transformer)
    h, w = latent_size(params.sampling.height, params.sampling.width, codec.scale_factor)
    noise = Flux2Pipeline._patchify_latents(initial_noise(items, codec.latent_channels, h, w))

    def theirs(guidance: float, output_type: str = "latent"):
        return pipe(prompt_embeds=embeds.prompt_embeds, latents=noise, height=params.sampling.height,
                    width=params.sampling.width, num_inference_steps=params.sampling.steps, guidance_scale=guidance,
                    output_type=output_type).images

    def vae_latents(tokens: torch.Tensor) -> torch.Tensor:
        """Flux2Pipeline's "latent" output is its packed, normalised tokens: the steps its decoding takes
        before the VAE (unpack by ids, de-normalise with the batch-norm statistics, unpatchify)."""
        x = Flux2Pipeline._unpack_latents_with_ids(tokens, Flux2Pipeline._prepare_latent_ids(noise))
        bn = pipe.vae.bn
        x = x * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps) + bn.running_mean.view(1, -1, 1, 1)
        return Flux2Pipeline._unpatchify_latents(x)

    ours = sample_latents(pipe.transformer, source.load_scheduler(params.model), embeds, items, params.sampling,
                          codec.latent_channels, codec.scale_factor, progress=False)
    torch.testing.assert_close(codec.to_vae(ours), vae_latents(theirs(4.0)), rtol=1e-5, atol=1e-5)
    assert np.abs(codec.decode(ours).astype(float) - theirs(4.0, "np") * 255).max() <= 1.0  # the pipeline's decoding
    assert not torch.allclose(theirs(4.0), theirs(1.0), atol=1e-4)
