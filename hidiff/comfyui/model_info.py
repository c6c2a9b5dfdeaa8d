"""Reading the structure of a ComfyUI model (a ModelPatcher) for validation."""

from __future__ import annotations

from typing import Any

import torch

from ..core.official import FAMILY_TRAITS
from ..core.unet_map import Family, UNetMap, inspect_unet


def unet_map_of(model: Any) -> UNetMap:
    """The :class:`UNetMap` of the diffusion model a ModelPatcher wraps (object patches respected)."""
    return inspect_unet(model.get_model_object("diffusion_model"))


def is_unet(model: Any) -> bool:
    """Whether the diffusion model is an ldm-style UNet (input and output blocks), which
    HiDiffusion's RAU-Net and MSW-MSA patch; a DiT (Flux, SD3, AuraFlow) is not."""
    diffusion_model = model.get_model_object("diffusion_model")
    return isinstance(getattr(diffusion_model, "input_blocks", None), torch.nn.ModuleList) and isinstance(
        getattr(diffusion_model, "output_blocks", None), torch.nn.ModuleList
    )


def latent_format_of(model: Any) -> tuple[str, int, int]:
    """The model's latent format: its name, channels and spatial dimensions (2 for images)."""
    latent_format = model.get_model_object("latent_format")
    return type(latent_format).__name__, int(latent_format.latent_channels), int(latent_format.latent_dimensions)


def percent_to_sigma(model: Any):
    """The model's own sampling-percent to sigma conversion."""
    return model.get_model_object("model_sampling").percent_to_sigma


def in_channels_of(model: Any) -> int:
    """Input channels of the diffusion model's first convolution (9 for inpainting UNets); 4
    for a model without UNet input blocks, which the plan then refuses with its own message."""
    blocks = getattr(model.get_model_object("diffusion_model"), "input_blocks", None)
    try:
        return int(blocks[0][0].in_channels)
    except (TypeError, IndexError, AttributeError):
        return 4


def is_edm_eps(model: Any) -> bool:
    """Whether the model samples as an EDM epsilon model, as Playground v2.5 does in ComfyUI."""
    return getattr(getattr(model.model, "model_type", None), "name", "") == "EDM"


def default_native_latent(model: Any, family: Family) -> int:
    """The latent side the model was trained at: 96 (768 px) for SD2.x v-prediction models,
    else the family's (SD1.x 64, SDXL 128)."""
    if family is Family.SD15:
        base = model.model
        unet_config = getattr(getattr(base, "model_config", None), "unet_config", {}) or {}
        v_prediction = getattr(getattr(base, "model_type", None), "name", "") == "V_PREDICTION"
        if v_prediction and unet_config.get("context_dim") == 1024:
            return 96
    return FAMILY_TRAITS[family].native_latent
