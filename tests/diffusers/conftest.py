"""Tiny random diffusers models in the SD1.5 and SDXL layouts, built from components.

Nothing is downloaded: UNets, VAEs and ControlNets are built from small configs with
fixed seeds, and prompts are passed as ``prompt_embeds`` so no tokenizer or text encoder
is needed. The VAE has two levels (latents are half the image size), so a 32x32 latent is a
64x64 image and every test stays fast on a CPU.

This directory deliberately has no ``__init__.py``: ``tests`` is on ``sys.path``, and a
regular package named ``diffusers`` there would shadow the real one. Without diffusers,
``import diffusers`` still finds this directory as a namespace package, so every test
module skips on ``pytest.importorskip("diffusers.hooks")`` (a real submodule), and the
builders here import diffusers lazily so this conftest loads either way.
"""

from __future__ import annotations

import sys

import pytest
import torch

CROSS_DIM = 32
POOLED_DIM = 32
TIME_DIM = 8
TOKENS = 8


def sd_unet(channels: tuple[int, ...] = (16, 32, 32, 32), sample_size: int = 16, in_channels: int = 4):
    """SD1.x layout: CrossAttnDownBlock2D x3 + DownBlock2D, attention from level 0."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=CROSS_DIM,
        attention_head_dim=2,
        norm_num_groups=8,
    ).eval()


def sdxl_unet(channels: tuple[int, ...] = (16, 32, 32), sample_size: int = 16, in_channels: int = 4):
    """SDXL layout: DownBlock2D then CrossAttn blocks (1, 2, 2 layers), text_time embedding."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 2, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=6 * TIME_DIM + POOLED_DIM,
        cross_attention_dim=CROSS_DIM,
        norm_num_groups=8,
    ).eval()


def tiny_vae(latent_channels: int = 4, **config):
    """A two-level VAE: latents are half the image size."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        norm_num_groups=8,
        layers_per_block=1,
        **config,
    ).eval()


def tiny_controlnet(unet):
    """A ControlNet from the UNet, its zero convs randomised so the residuals are not zero."""
    from diffusers import ControlNetModel

    torch.manual_seed(1)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in zero_convs:
            for param in conv.parameters():
                param.normal_(0.0, 0.05)
    return controlnet.eval()


def scheduler(kind: str = "ddim"):
    """DDIM (the official examples' scheduler; no begin_index) or Euler (has one)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    if kind == "euler":
        return EulerDiscreteScheduler(**config)
    return DDIMScheduler(**config, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sd_pipeline(cls=None, **extra):
    """A Stable Diffusion 1.x-layout pipeline of class ``cls`` (default text-to-image)."""
    from diffusers import StableDiffusionPipeline

    cls = cls or StableDiffusionPipeline
    parts = {"vae": tiny_vae(), "text_encoder": None, "tokenizer": None, "unet": sd_unet(), "scheduler": scheduler()}
    parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    parts.update(extra)
    return cls(**parts).to("cpu")


def sdxl_pipeline(cls=None, **extra):
    """An SDXL-layout pipeline of class ``cls`` (default text-to-image)."""
    from diffusers import StableDiffusionXLPipeline

    cls = cls or StableDiffusionXLPipeline
    parts = {
        "vae": tiny_vae(),
        "text_encoder": None,
        "text_encoder_2": None,
        "tokenizer": None,
        "tokenizer_2": None,
        "unet": sdxl_unet(),
        "scheduler": scheduler(),
    }
    parts.update(extra)
    return cls(**parts).to("cpu")


def sd_prompt(batch: int = 1) -> dict:
    torch.manual_seed(2)
    return {"prompt_embeds": torch.randn(batch, TOKENS, CROSS_DIM)}


def sdxl_prompt(batch: int = 1) -> dict:
    torch.manual_seed(2)
    return {
        "prompt_embeds": torch.randn(batch, TOKENS, CROSS_DIM),
        "pooled_prompt_embeds": torch.randn(batch, POOLED_DIM),
    }


def run(pipe, prompt: dict, steps: int, size: int = 64, seed: int = 0, **kwargs) -> torch.Tensor:
    """Sample latents (output_type='latent') with a fixed generator, guidance 1 (one batch)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = pipe(
            **prompt,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=1.0,
            generator=generator,
            output_type="latent",
            **kwargs,
        )
    return out.images


def sdxl_added_cond(batch: int = 1) -> dict:
    """``added_cond_kwargs`` for a direct SDXL UNet call."""
    torch.manual_seed(3)
    return {"text_embeds": torch.randn(batch, POOLED_DIM), "time_ids": torch.randn(batch, 6).abs() * 64}


@pytest.fixture
def helpers():
    """This module, so tests can build models without importing it by path."""
    return sys.modules[__name__]


FLUX_JOINT_DIM = 32
FLUX_POOLED_DIM = 32


def flux_transformer():
    """A Flux transformer of one double and one single block (heads of 8 = rope axes 2+2+4)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=FLUX_JOINT_DIM,
        pooled_projection_dim=FLUX_POOLED_DIM,
        guidance_embeds=False,
        axes_dims_rope=(2, 2, 4),
    ).eval()


def flux_vae():
    """A two-level VAE with Flux's 16 latent channels and a shift factor."""
    return tiny_vae(16, shift_factor=0.1, scaling_factor=0.5, use_quant_conv=False, use_post_quant_conv=False)


def flux_pipeline(cls=None):
    """A Flux pipeline of class ``cls`` (default text-to-image) with FLUX.1-dev's scheduler config."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    cls = cls or FluxPipeline
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    parts = {"scheduler": scheduler, "vae": flux_vae(), "transformer": flux_transformer()}
    parts.update(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    pipe = cls(**parts).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_prompt(batch: int = 1) -> dict:
    torch.manual_seed(2)
    return {
        "prompt_embeds": torch.randn(batch, TOKENS, FLUX_JOINT_DIM),
        "pooled_prompt_embeds": torch.randn(batch, FLUX_POOLED_DIM),
    }


def sd3_pipeline(cls=None):
    """An SD3 pipeline of class ``cls`` (default text-to-image): one joint block, heads of 8,
    2x2 patches, SD3's scheduler config (shift 3)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    cls = cls or StableDiffusion3Pipeline
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=FLUX_JOINT_DIM, caption_projection_dim=16, pooled_projection_dim=FLUX_POOLED_DIM,
        out_channels=16, pos_embed_max_size=32,
    ).eval()  # fmt: skip
    parts = {"scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "vae": flux_vae(), "transformer": transformer}
    for k in ("", "_2", "_3"):
        parts.update({f"text_encoder{k}": None, f"tokenizer{k}": None})
    pipe = cls(**parts).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe
