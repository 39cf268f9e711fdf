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


def _processor_ids(processor, prompts: list[str], max_length: int) -> dict:
    """What Flux2Pipeline's encode_prompt feeds Mistral 3: the processor's chat template over the
    system and user turns, padded and cut to ``max_length``."""
    return processor.apply_chat_template(format_input(prompts=prompts), add_generation_prompt=False, tokenize=True,
                                         return_dict=True, return_tensors="pt", padding="max_length", truncation=True,
                                         max_length=max_length)


@torch.no_grad()
def test_prompts_are_encoded_and_counted_as_flux2pipeline_does(tiny_flux2_dev_folder):
    """Our encoder (the folder's text half only) gives Mistral 3's hidden states of layers 10, 20, 30
    side by side over the templated, padded prompt, and the cut tokenizer counts each prompt as the
    processor's attention mask does (system message and template included)."""
    preflight.check_model_folder(tiny_flux2_dev_folder, "flux2")
    enc = Flux2TextEncoder(tiny_flux2_dev_folder, 64, CPU, torch.float32)
    prompts = ["a cat", "the digit 7 drawn in ink"]
    ours = enc.encode(prompts)[0]
    pipe = Flux2Pipeline.from_pretrained(str(tiny_flux2_dev_folder))  # the whole folder, loaded on its own
    inputs = _processor_ids(pipe.tokenizer, prompts, 64)
    hidden = pipe.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                               output_hidden_states=True, use_cache=False).hidden_states
    assert len(hidden) == 33 and ours.shape == (2, 64, 24)  # embeddings + 32 layers: 10, 20, 30 are inner ones
    torch.testing.assert_close(ours, torch.cat([hidden[10], hidden[20], hidden[30]], dim=-1), rtol=1e-6, atol=1e-6)
    mask = inputs["attention_mask"]
    assert mask.sum(1).tolist() == [len(enc.cut_tokenizer(p)["input_ids"]) for p in prompts]


def test_a_prompt_is_cut_where_the_system_message_leaves_it_room(tiny_flux2_dev_folder, capsys):
    """FLUX.2-dev's long system message counts against text.max_sequence_length: a cut drops the
    template's closing [/INST] and the prompt's tail, so the prompt keeps 64 minus the template before
    it; the warning names what is kept, and the encoder sees exactly that."""
    enc = Flux2TextEncoder(tiny_flux2_dev_folder, 64, CPU, torch.float32)
    before = int(_processor_ids(enc.pipe.tokenizer, [""], 512)["attention_mask"].sum()) - 1  # all but the closing [/INST]
    assert 20 < before < 64
    prompt = " ".join(["red"] * (64 - before + 5))
    kept = " ".join(["red"] * (64 - before))
    assert text.check_cut(enc, [prompt, "a cat"], "set z", digits=False) == {prompt: kept}
    err = capsys.readouterr().err
    assert "1 of 2 prompts are longer than text.max_sequence_length (64 tokens)" in err and f"→ {kept!r}" in err
    long, cut = enc.encode([prompt, kept])[0]
    assert torch.equal(long, cut)


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
    guided = theirs(4.0)
    torch.testing.assert_close(codec.to_vae(ours), vae_latents(guided), rtol=1e-5, atol=1e-5)
    assert np.abs(codec.decode(ours).astype(float) - theirs(4.0, "np") * 255).max() <= 1.0  # the pipeline's decoding
    assert not torch.allclose(guided, theirs(1.0), atol=1e-4)
