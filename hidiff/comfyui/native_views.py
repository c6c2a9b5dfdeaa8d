"""Native views in ComfyUI (:mod:`hidiff.core.native_views`): an ``APPLY_MODEL`` wrapper.

On a call at the upscaled size the wrapper runs the same model on the latent's ``s²``
native-size views in one batch (each image's conditioning, sigma and extra inputs
repeated per view; none of the pack's HiDiffusion patches, as an unpatched native sampler
would run them) and blends the views' prediction, put back in place, into the call's
(at share 1 the call itself is skipped). ``APPLY_MODEL`` returns the denoised prediction,
so the blend acts on x0 whatever the model's parameterisation, below CFG and the lock.
A call at another size runs as it is; an inpainting model's call (concatenated channels)
and a ControlNet-guided one run without views, and the run is told once.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy.patcher_extension import WrappersMP

from ..core.native_views import blend, repeat_per_view, view_stride, views_input, views_prediction
from ..core.schedule import current_sigma
from ..core.settings import GuideSettings
from ..log import logger
from .patch_base import VIEWS, SharedPatch
from .run_state import guide_call_options, install_run_state, noise_level, run_state

EFFECT = VIEWS


class NativeViews(SharedPatch):
    """The wrapper: a large call's prediction blended with its native views'.

    Args:
        size: (height, width) of the upscaled latent the large calls sample.
        stride: the views' stride (:func:`hidiff.core.native_views.view_stride`).
        settings: the share, the input blur and the degrain.
    """

    hidiffusion_effect = EFFECT

    def __init__(self, size: tuple[int, int], stride: int, settings: GuideSettings) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.stride = stride
        self.settings = settings

    def __repr__(self) -> str:
        views = self.settings
        return (
            f"NativeViews(size={self.size[1]}x{self.size[0]}, stride={self.stride}, share={views.views:g}, "
            f"blur={views.views_blur:g}, degrain={views.views_degrain:g})"
        )

    def __call__(self, executor: Any, x: torch.Tensor, t: torch.Tensor, c_concat: Any, c_crossattn: Any,
                 control: Any, transformer_options: dict, **kwargs: Any) -> Any:  # fmt: skip
        def large() -> Any:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

        if x.ndim != 4 or tuple(x.shape[-2:]) != self.size:
            return large()
        state = run_state(transformer_options, EFFECT)
        problem = self.problem_with(c_concat, control)
        if problem is not None:
            message = f"HiDiffusion Hires Fix: {problem}; those calls run without native views"
            state.tell_once(message) if state is not None else logger.debug(message)
            return large()
        level = noise_level(state, current_sigma(t), executor.class_obj.model_sampling)
        batch, stride = x.shape[0], self.stride

        def per_view(value: Any) -> Any:
            is_batched = isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch
            return repeat_per_view(value, stride) if is_batched else value

        views = executor(
            views_input(x, stride, level, self.settings.views_blur), per_view(t), None, per_view(c_crossattn), None,
            guide_call_options(transformer_options), **{key: per_view(value) for key, value in kwargs.items()},
        )  # fmt: skip
        placed = views_prediction(views, stride, self.size, self.settings.views_degrain)
        if self.settings.views >= 1.0:  # the large call would be blended away: skip it
            return placed
        return blend(large(), placed, self.settings.views)

    @staticmethod
    def problem_with(c_concat: Any, control: Any) -> str | None:
        """Why a large call cannot be replaced by native views, or None: an inpainting model's
        concatenated channels and a ControlNet's residuals are made for the large latent."""
        if c_concat is not None:
            return "the model takes concatenated channels (an inpainting model)"
        if control is not None:
            return "a ControlNet guides the large calls (its hint is at the large size)"
        return None


def apply_views(model: Any, size: tuple[int, int], native: tuple[int, int], settings: GuideSettings) -> Any:
    """A clone of ``model`` with native views on calls of ``size`` (an earlier one of the pack
    replaced); without them when they are off or ``size`` is under twice ``native`` on a side
    (said in the log); ``model`` itself is untouched."""
    stride = view_stride(size, native)
    patched = model.clone()
    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, EFFECT)
    if settings.views == 0.0:
        return patched
    if stride is None:
        logger.info(
            "HiDiffusion Hires Fix: a %dx%d latent is under twice the %dx%d one on a side; it samples without "
            "native views (they keep the structure at 2x the side and above)", size[1], size[0], native[1], native[0]
        )  # fmt: skip
        return patched
    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, EFFECT, NativeViews(size, stride, settings))
    install_run_state(patched, EFFECT)
    return patched
