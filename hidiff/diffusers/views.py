"""Native views on a diffusers UNet (:mod:`hidiff.core.native_views`): the guided mode's second half.

The ComfyUI node replaces each large call with the model run on the latent's ``s²``
native-size views; ComfyUI's ``APPLY_MODEL`` hands over x0. A diffusers UNet returns
epsilon, v or x0 as its scheduler is configured, so this ``ModelHook`` on the UNet itself
turns each view's output into x0 at the view's own (blurred) input, puts the views back
in place, degrains them, and returns the output whose x0 at the call's sample is that
prediction (:func:`hidiff.diffusers.guide.output_for_x0`). The lock's forward hook then
acts on it, as the node's lock acts after the views.

The views call runs with HiDiffusion off (the call state is cleared for it, as a native
sampler would run), the conditioning and every per-sample argument repeated per view. At
share 1 the large call is skipped. A call with ControlNet residuals or concatenated
channels, or a size under twice the reference on a side, runs as the large call, and the
run is told once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from ..core.native_views import blend, repeat_per_view, view_stride, views_input, views_prediction
from ..core.settings import GuideSettings
from .guide import alpha_bar_at, output_for_x0, predicted_x0
from .hooks import StateSlot, main_tensor, replace_main
from .position import timestep_value

RESIDUAL_KEYS = ("down_block_additional_residuals", "mid_block_additional_residual")
"""A ControlNet's residuals: made for the large latent, so such a call keeps it."""


class NativeViewsHook(ModelHook):
    """On the UNet: each call at least twice the reference's size on a side, run as native views.

    Args:
        reference_size: (height, width) of the native-size latents (the views' size, about).
        settings: the views' share, input blur and degrain (the node's defaults unless given).
        scheduler_of: the scheduler whose ``alphas_cumprod`` and ``prediction_type`` apply.
        slot: the HiDiffusion call state, cleared while the views run.
        tell_once: logs a message once per installation.
    """

    def __init__(
        self,
        reference_size: tuple[int, int],
        settings: GuideSettings,
        scheduler_of: Callable[[], Any],
        slot: StateSlot,
        tell_once: Callable[[str, str], None],
    ) -> None:
        super().__init__()
        self.reference_size = reference_size
        self.settings = settings
        self.scheduler_of = scheduler_of
        self.slot = slot
        self.tell_once = tell_once

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        original = self.fn_ref.original_forward
        sample, timestep = _sample_and_timestep(args, kwargs)
        stride = self.stride_for(sample, module, kwargs)
        if stride is None or timestep is None:
            return original(*args, **kwargs)
        scheduler = self.scheduler_of()
        step = timestep_value(timestep)
        level = step / scheduler.config.num_train_timesteps
        alpha_bar, prediction_type = alpha_bar_at(scheduler, step), scheduler.config.prediction_type
        size = (int(sample.shape[-2]), int(sample.shape[-1]))
        views_in = views_input(sample.float(), stride, level, self.settings.views_blur).to(sample.dtype)
        views_out = self.run_views(original, views_in, sample.shape[0], stride, args, kwargs)
        views_x0 = predicted_x0(main_tensor(views_out).float(), views_in.float(), alpha_bar, prediction_type)
        placed = views_prediction(views_x0, stride, size, self.settings.views_degrain)
        if self.settings.views < 1.0:  # at share 1 the large call would be blended away: it is skipped
            large = original(*args, **kwargs)
            large_x0 = predicted_x0(main_tensor(large).float(), sample.float(), alpha_bar, prediction_type)
            placed, views_out = blend(large_x0, placed, self.settings.views), large
        output = output_for_x0(placed, sample.float(), alpha_bar, prediction_type)
        return replace_main(views_out, output.to(sample.dtype))

    def stride_for(self, sample: torch.Tensor, module: nn.Module, kwargs: dict[str, Any]) -> int | None:
        """The views' stride for this call, or None when it runs as the large call (told once
        when the reason is the call's inputs, not its size)."""
        if self.settings.views == 0.0 or sample.ndim != 4:
            return None
        stride = view_stride((int(sample.shape[-2]), int(sample.shape[-1])), self.reference_size)
        if stride is None:
            if sample.shape[-2] > self.reference_size[0] or sample.shape[-1] > self.reference_size[1]:
                self.tell_once("views_size", "native views act from twice the reference's side; this size runs without")
            return None
        state = self.slot.current
        if any(kwargs.get(key) is not None for key in RESIDUAL_KEYS) or (state and state.down_residuals is not None):
            self.tell_once("views_controlnet", "a ControlNet guides the large calls; they run without native views")
            return None
        if sample.shape[1] != module.config.out_channels:
            self.tell_once("views_channels", "the UNet takes concatenated channels; its calls run without native views")
            return None
        return stride

    def run_views(
        self, original: Callable[..., Any], views_in: torch.Tensor, batch: int, stride: int, args: tuple, kwargs: dict
    ) -> Any:
        """The UNet on the views, every per-sample argument repeated per view, HiDiffusion off."""

        def per_view(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
                return repeat_per_view(value, stride)
            if isinstance(value, dict):
                return {key: per_view(item) for key, item in value.items()}
            return value

        rest = [per_view(value) for value in args[1:]]
        views_kwargs = {key: per_view(value) for key, value in kwargs.items() if key != "sample"}
        call_args = (views_in, *rest) if args else ()
        if not args:
            views_kwargs["sample"] = views_in
        state, self.slot.current = self.slot.current, None
        try:
            return original(*call_args, **views_kwargs)
        finally:
            self.slot.current = state


def _sample_and_timestep(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
    sample = args[0] if args else kwargs["sample"]
    timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
    return sample, timestep
