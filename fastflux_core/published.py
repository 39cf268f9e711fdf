"""Published component configs of the models FastFLUX prunes — what needs their shapes without their
weights: the budget command (:mod:`fastflux_core.budget`, ``examples/<model>/params.yaml``) when no
folder is at hand, and the FLUX-width rehearsal folder (``scripts/make_flux_width_folder.py``).

Each is the ``config.json`` (``scheduler_config.json``) of a sub-folder of the model's Hugging Face
repository, as published; where it came from and how sure each value is:
``examples/published_configs.md`` (nothing here is downloaded). Keys a loader ignores or fills with
its default (``_diffusers_version``, ``torch_dtype``) are left out. A real folder's own configs always
win when ``model.path`` exists (:func:`fastflux_core.shapes.folder_config`); a family's set is
:data:`REFERENCE_CONFIGS`. Only the tools read them (budget, rehearsal, stage ``validate`` sizing a
run): no stage that computes a result depends on this file.
"""

# black-forest-labs/FLUX.1-dev
FLUX1_DEV_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}

FLUX1_DEV_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

FLUX1_DEV_CLIP_TEXT = {  # text_encoder: CLIP ViT-L/14 text tower
    "architectures": ["CLIPTextModel"],
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}

FLUX1_DEV_T5_ENCODER = {  # text_encoder_2: T5 v1.1 XXL encoder
    "architectures": ["T5EncoderModel"],
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "feed_forward_proj": "gated-gelu",
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
}

FLUX1_DEV_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}

# black-forest-labs/FLUX.2-dev (the transformer: diffusers' Flux2Transformer2DModel defaults, which are its)
FLUX2_DEV_TRANSFORMER = {
    "_class_name": "Flux2Transformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [32, 32, 32, 32],
    "eps": 1e-06,
    "guidance_embeds": True,
    "in_channels": 128,
    "joint_attention_dim": 15360,
    "mlp_ratio": 3.0,
    "num_attention_heads": 48,
    "num_layers": 8,
    "num_single_layers": 48,
    "patch_size": 1,
    "rope_theta": 2000,
    "timestep_guidance_channels": 256,
}

FLUX2_DEV_VAE = {
    "_class_name": "AutoencoderKLFlux2",
    "act_fn": "silu",
    "batch_norm_eps": 0.0001,
    "batch_norm_momentum": 0.1,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 32,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "patch_size": [2, 2],
    "sample_size": 1024,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
}

FLUX2_DEV_TEXT_ENCODER = {  # Mistral Small 3.1 (24B): the text model and its Pixtral vision tower
    "architectures": ["Mistral3ForConditionalGeneration"],
    "image_token_index": 10,
    "model_type": "mistral3",
    "multimodal_projector_bias": False,
    "projector_hidden_act": "gelu",
    "spatial_merge_size": 2,
    "text_config": {"attention_dropout": 0.0, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
                    "initializer_range": 0.02, "intermediate_size": 32768, "max_position_embeddings": 131072,
                    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 40,
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
                    "sliding_window": None, "use_cache": True, "vocab_size": 131072},
    "vision_config": {"attention_dropout": 0.0, "head_dim": 64, "hidden_act": "silu", "hidden_size": 1024,
                      "image_size": 1540, "initializer_range": 0.02, "intermediate_size": 4096, "model_type": "pixtral",
                      "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 24, "patch_size": 14,
                      "rope_theta": 10000.0},
    "vision_feature_layer": -1,
}

FLUX2_DEV_SCHEDULER = FLUX1_DEV_SCHEDULER  # published with FLUX.1-dev's values (Flux2Pipeline computes its own mu)

# Qwen/Qwen-Image (the transformer: diffusers' QwenImageTransformer2DModel defaults, which are its)
QWEN_IMAGE_TRANSFORMER = {
    "_class_name": "QwenImageTransformer2DModel",
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": False,
    "in_channels": 64,
    "joint_attention_dim": 3584,
    "num_attention_heads": 24,
    "num_layers": 60,
    "out_channels": 16,
    "patch_size": 2,
}

QWEN_IMAGE_VAE = {
    "_class_name": "AutoencoderKLQwenImage",
    "attn_scales": [],
    "base_dim": 96,
    "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0,
    "latents_mean": [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    "latents_std": [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True, True],
    "z_dim": 16,
}

QWEN_IMAGE_TEXT_ENCODER = {  # Qwen2.5-VL-7B: the text model (whose last hidden states are read) and its vision tower
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "tie_word_embeddings": False,
    "text_config": {"attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
                    "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
                    "max_position_embeddings": 128000, "max_window_layers": 28, "model_type": "qwen2_5_vl_text",
                    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
                    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": None, "use_cache": True,
                    "use_sliding_window": False, "vocab_size": 152064,
                    "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"}},
    "vision_config": {"depth": 32, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "hidden_size": 1280,
                      "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 3420, "model_type": "qwen2_5_vl",
                      "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112},
}

QWEN_IMAGE_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

# stabilityai/stable-diffusion-3.5-large (no dual attention layers: only 3.5-medium has them)
SD35_LARGE_TRANSFORMER = {
    "_class_name": "SD3Transformer2DModel",
    "attention_head_dim": 64,
    "caption_projection_dim": 2432,
    "in_channels": 16,
    "joint_attention_dim": 4096,
    "num_attention_heads": 38,
    "num_layers": 38,
    "out_channels": 16,
    "patch_size": 2,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
    "sample_size": 128,
}

SD35_LARGE_VAE = {**FLUX1_DEV_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}  # FLUX.1's AutoencoderKL layout

SD35_LARGE_CLIP_L = {  # text_encoder: CLIP ViT-L/14 text tower with its projection
    "architectures": ["CLIPTextModelWithProjection"],
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

SD35_LARGE_CLIP_G = {  # text_encoder_2: OpenCLIP bigG/14 text tower with its projection
    **SD35_LARGE_CLIP_L, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
    "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
}

SD35_LARGE_T5_ENCODER = FLUX1_DEV_T5_ENCODER  # text_encoder_3: the same T5 v1.1 XXL encoder as FLUX.1-dev's

SD35_LARGE_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}

# model.source → sub-folder → its published config: FLUX.1-dev's, FLUX.2-dev's (a klein folder's own
# configs say klein), SD3.5-large's (an SD3-medium or SD3.5-medium folder's own configs say which), Qwen-Image's
REFERENCE_CONFIGS: dict[str, dict[str, dict]] = {
    "flux": {"transformer": FLUX1_DEV_TRANSFORMER, "vae": FLUX1_DEV_VAE, "scheduler": FLUX1_DEV_SCHEDULER,
             "text_encoder": FLUX1_DEV_CLIP_TEXT, "text_encoder_2": FLUX1_DEV_T5_ENCODER},
    "flux2": {"transformer": FLUX2_DEV_TRANSFORMER, "vae": FLUX2_DEV_VAE, "scheduler": FLUX2_DEV_SCHEDULER,
              "text_encoder": FLUX2_DEV_TEXT_ENCODER},
    "sd3": {"transformer": SD35_LARGE_TRANSFORMER, "vae": SD35_LARGE_VAE, "scheduler": SD35_LARGE_SCHEDULER,
            "text_encoder": SD35_LARGE_CLIP_L, "text_encoder_2": SD35_LARGE_CLIP_G, "text_encoder_3": SD35_LARGE_T5_ENCODER},
    "qwenimage": {"transformer": QWEN_IMAGE_TRANSFORMER, "vae": QWEN_IMAGE_VAE, "scheduler": QWEN_IMAGE_SCHEDULER,
                  "text_encoder": QWEN_IMAGE_TEXT_ENCODER},
}
