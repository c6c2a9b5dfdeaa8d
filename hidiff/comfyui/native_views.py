"""Native views in ComfyUI (:mod:`hidiff.core.native_views`): an ``APPLY_MODEL`` wrapper.

On a call at the upscaled size the wrapper runs the call, then the same model on the
latent's ``s²`` native-size views in one batch (each image's conditioning, sigma and
extra inputs repeated per view; none of the pack's HiDiffusion patches, as an unpatched
native sampler would run them), and blends the views' prediction, put back in place,
into the call's. ``APPLY_MODEL`` returns the denoised prediction, so the blend acts on x0
whatever the model's parameterisation. A call at another size runs as it is; one whose
size the views cannot cut (a side that does not divide by the stride), or an inpainting
model's concatenated channels, runs without views and the run is told once.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy.patcher_extension import WrappersMP

from ..core.native_views import (
    blend_views_low,
    blur_sigma,
    degrain,
    from_views,
    gaussian_blur,
    padded,
    repeat_per_view,
    to_views,
    view_stride,
    views_weight,
)
from ..core.raunet import sigma_to_percent
from ..core.schedule import current_sigma
from ..core.settings import GuideSettings
from ..log import logger
from .patch_base import VIEWS, SharedPatch
from .run_state import guide_call_options, install_run_state, run_state

EFFECT = VIEWS
MIN_WEIGHT = 0.01
"""Below this share the views' call is skipped (it would move x0 by under 1%)."""


class NativeViews(SharedPatch):
    """The wrapper: the call's prediction blended with its native views'.

    Args:
        size: (height, width) of the upscaled latent the large calls sample.
        native: (height, width) of the native latent it was upscaled from.
        strength: the views' share at pure noise.
        exponent: how fast the share falls with the noise level.
        blur: the Gaussian sigma of the views' input at pure noise.
    """

    hidiffusion_effect = EFFECT

    def __init__(self, size: tuple[int, int], native: tuple[int, int], settings: GuideSettings) -> None:
        self.size = tuple(size)
        self.native = tuple(native)
        self.settings = settings

    def __repr__(self) -> str:
        return f"NativeViews(size={self.size}, native={self.native}, {self.settings})"

    def __call__(self, executor: Any, x: torch.Tensor, t: torch.Tensor, c_concat: Any, c_crossattn: Any,
                 control: Any, transformer_options: dict, **kwargs: Any) -> Any:  # fmt: skip
        def large() -> Any:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        settings = self.settings
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.size or settings.views == 0.0:
            return large()
        percent_to_sigma = executor.class_obj.model_sampling.percent_to_sigma
        level = 1.0 - sigma_to_percent(current_sigma(t), percent_to_sigma)
        weight = views_weight(level, settings.views, settings.views_exponent)
        if weight < MIN_WEIGHT or level < settings.views_end:
            return large()
        stride = view_stride(self.size, self.native)
        problem = self.problem_with(stride, c_concat)
        if problem is not None:
            state = run_state(transformer_options, EFFECT)
            message = f"HiDiffusion Hires Fix: {problem}; that call runs without native views"
            state.tell_once(message) if state is not None else logger.debug(message)
            return large()
        batch = x.shape[0]

        def per_view(value: Any) -> Any:
            is_batched = isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch
            return repeat_per_view(value, stride) if is_batched else value

        views_input = gaussian_blur(x, stride, blur_sigma(level, settings.views_blur, settings.views_blur_floor))
        views = executor(
            to_views(padded(views_input, stride), stride), per_view(t), None, per_view(c_crossattn), None,
            guide_call_options(transformer_options), **{key: per_view(value) for key, value in kwargs.items()},
        )  # fmt: skip
        placed = from_views(views, stride)
        if settings.views_degrain > 0.0:
            placed = degrain(placed, stride, settings.views_degrain)
        placed = placed[..., : x.shape[-2], : x.shape[-1]]
        if weight >= 1.0:  # the large call would be blended away: skip it
            return placed
        if settings.views_band == "low":
            return blend_views_low(large(), views, stride, weight, max(settings.views_blur, 1.0))
        return torch.lerp(large(), placed, weight)

    def problem_with(self, stride: int | None, c_concat: Any) -> str | None:
        """Why a call at the upscaled size cannot have native views, or None."""
        if stride is None:
            return f"a {self.size[1]}x{self.size[0]} latent does not cut into native views"
        if c_concat is not None:
            return "the model takes concatenated channels (an inpainting model)"
        return None


def apply_views(model: Any, size: tuple[int, int], native: tuple[int, int], settings: GuideSettings) -> Any:
    """A clone of ``model`` with native views on calls of ``size`` (an earlier one of the pack
    replaced); ``model`` itself is untouched."""
    patched = model.clone()
    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, EFFECT)
    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, EFFECT, NativeViews(size, native, settings))
    install_run_state(patched, EFFECT)
    return patched
