"""Reading the structure of a ComfyUI model (a ModelPatcher) for validation."""

from __future__ import annotations

from typing import Any

from ..core.unet_map import UNetMap, inspect_unet


def unet_map_of(model: Any) -> UNetMap:
    """The :class:`UNetMap` of the diffusion model a ModelPatcher wraps (object patches respected)."""
    return inspect_unet(model.get_model_object("diffusion_model"))


def percent_to_sigma(model: Any):
    """The model's own sampling-percent to sigma conversion."""
    return model.get_model_object("model_sampling").percent_to_sigma
