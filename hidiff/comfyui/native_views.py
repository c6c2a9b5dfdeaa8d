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

from ..core.native_views import blend_views, repeat_per_view, to_views, view_stride
from ..log import logger
from .patch_base import VIEWS, SharedPatch
from .run_state import guide_call_options, install_run_state, run_state

EFFECT = VIEWS


class NativeViews(SharedPatch):
    """The wrapper: the call's prediction blended with its native views' (weight ``weight``).

    Args:
        size: (height, width) of the upscaled latent the large calls sample.
        native: (height, width) of the native latent it was upscaled from.
        weight: the views' share in the prediction.
    """

    hidiffusion_effect = EFFECT

    def __init__(self, size: tuple[int, int], native: tuple[int, int], weight: float) -> None:
        self.size = tuple(size)
        self.native = tuple(native)
        self.weight = weight

    def __repr__(self) -> str:
        return f"NativeViews(size={self.size}, native={self.native}, weight={self.weight:g})"

    def __call__(self, executor: Any, x: torch.Tensor, t: torch.Tensor, c_concat: Any, c_crossattn: Any,
                 control: Any, transformer_options: dict, **kwargs: Any) -> Any:  # fmt: skip
        large = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.size or self.weight == 0.0:
            return large
        stride = view_stride(self.size, self.native)
        problem = (
            None if stride is not None else f"a {self.size[1]}x{self.size[0]} latent does not cut into native views"
        )
        if c_concat is not None:
            problem = "the model takes concatenated channels (an inpainting model)"
        if problem is not None:
            state = run_state(transformer_options, EFFECT)
            message = f"HiDiffusion Hires Fix: {problem}; that call runs without native views"
            state.tell_once(message) if state is not None else logger.debug(message)
            return large
        batch = x.shape[0]

        def per_view(value: Any) -> Any:
            is_batched = isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch
            return repeat_per_view(value, stride) if is_batched else value

        views = executor(
            to_views(x, stride), per_view(t), None, per_view(c_crossattn), None,
            guide_call_options(transformer_options), **{key: per_view(value) for key, value in kwargs.items()},
        )  # fmt: skip
        return blend_views(large, views, stride, self.weight)


def apply_views(model: Any, size: tuple[int, int], native: tuple[int, int], weight: float) -> Any:
    """A clone of ``model`` with native views on calls of ``size`` (an earlier one of the pack
    replaced); ``model`` itself is untouched."""
    patched = model.clone()
    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, EFFECT)
    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, EFFECT, NativeViews(size, native, weight))
    install_run_state(patched, EFFECT)
    return patched
