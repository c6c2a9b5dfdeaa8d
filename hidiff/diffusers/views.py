"""Native views on a diffusers UNet (:mod:`hidiff.core.native_views`): the guided mode's second half.

The ComfyUI node replaces each large call with the model run on the latent's ``s²``
native-size views; ComfyUI's ``APPLY_MODEL`` hands over x0. A diffusers UNet returns
epsilon, v or x0 as its scheduler is configured, so each view's output is turned into x0 at
the view's own (blurred) input, the views are put back in place and degrained, and the call
returns the output whose x0 at its own sample is that prediction
(:func:`hidiff.diffusers.guide.output_for_x0`). The lock's forward hook then acts on it, as
the node's lock acts after the views.

Only torch hooks on the UNet, as for the rest of HiDiffusion (so accelerate's hooks, which
replace ``unet.forward``, can come before or after and survive removal):

* a forward pre-hook, first of all: at share 1 it hands the UNet the views instead of the
  latent (every per-sample argument repeated per view), so the large call is never run;
* a forward hook, before the lock's: turns the views' output into the large call's; below
  share 1 the pre-hook left the large call alone and this hook runs the views itself;
* an ``always_call`` forward hook, last: forgets the call, also when it raised.

While the UNet runs on views, :meth:`NativeViews.runs_views` is true and HiDiffusion's call
state is none (the views are native-size calls, as a native sampler runs them). A call with
ControlNet residuals or concatenated channels, or a size under twice the reference on a
side, runs as the large call, and the run is told once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.native_views import blend, repeat_per_view, view_stride, views_input, views_prediction
from ..core.settings import GuideSettings
from .guide import alpha_bar_at, output_for_x0, predicted_x0
from .hooks import main_tensor, replace_main, sample_and_timestep
from .position import timestep_value

RESIDUAL_KEYS = ("down_block_additional_residuals", "mid_block_additional_residual")
"""A ControlNet's residuals: made for the large latent, so such a call keeps it."""


@dataclass
class ViewsCall:
    """One large call served by native views."""

    sample: torch.Tensor
    """The large latent the call was made with."""
    timestep: Any
    views_in: torch.Tensor
    """The views the UNet denoises (:func:`hidiff.core.native_views.views_input`)."""
    views_args: tuple
    views_kwargs: dict
    """The call's arguments for the views (per-sample ones repeated per view)."""
    stride: int
    alpha_bar: float
    prediction_type: str
    replaced: bool
    """The UNet runs on the views instead of the latent (share 1)."""


class NativeViews:
    """The three hooks of native views on one UNet, and the call in progress.

    Args:
        reference_size: (height, width) of the native-size latents.
        settings: the views' share, input blur and degrain (the node's defaults unless given).
        scheduler_of: the scheduler whose ``alphas_cumprod`` and ``prediction_type`` apply.
        tell_once: logs a message once per installation, by key.
    """

    def __init__(
        self,
        reference_size: tuple[int, int],
        settings: GuideSettings,
        scheduler_of: Callable[[], Any],
        tell_once: Callable[[str, str], None],
    ) -> None:
        self.reference_size = reference_size
        self.settings = settings
        self.scheduler_of = scheduler_of
        self.tell_once = tell_once
        self.call: ViewsCall | None = None
        self.inner = False
        """The views of a call below share 1 are running (a nested UNet call)."""

    def runs_views(self) -> bool:
        """Whether the UNet call in progress is on views (HiDiffusion stays off for it)."""
        return self.inner or (self.call is not None and self.call.replaced)

    def input_of(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
        """The sample and timestep of the call as it was made (for the lock after the views)."""
        if self.call is not None and self.call.replaced and not self.inner:
            return self.call.sample, self.call.timestep
        return sample_and_timestep(args, kwargs)

    # ------------------------------------------------------------------------- the hooks

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: set up the call's views; at share 1, the UNet's input becomes them."""
        if self.inner:
            return args, kwargs
        self.call = None
        sample, timestep = sample_and_timestep(args, kwargs)
        stride = self.stride_for(sample, timestep, module, kwargs)
        if stride is None:
            return args, kwargs
        scheduler = self.scheduler_of()
        step = timestep_value(timestep)
        level = step / scheduler.config.num_train_timesteps
        views_in = views_input(sample.float(), stride, level, self.settings.views_blur).to(sample.dtype)
        views_args, views_kwargs = per_view_arguments(views_in, sample.shape[0], stride, args, kwargs)
        replaced = self.settings.views >= 1.0  # the large call would be blended away: it is not run
        self.call = ViewsCall(
            sample, timestep, views_in, views_args, views_kwargs, stride,
            alpha_bar_at(scheduler, step), scheduler.config.prediction_type, replaced,
        )  # fmt: skip
        return (views_args, views_kwargs) if replaced else (args, kwargs)

    def after(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook: the call's output from the views' (blended with the large call's below share 1)."""
        call = self.call
        if self.inner or call is None:
            return output
        if call.replaced:
            views_out = output
        else:
            self.inner = True
            try:
                views_out = module(*call.views_args, **call.views_kwargs)
            finally:
                self.inner = False
        size = (int(call.sample.shape[-2]), int(call.sample.shape[-1]))
        x0 = predicted_x0(main_tensor(views_out).float(), call.views_in.float(), call.alpha_bar, call.prediction_type)
        placed = views_prediction(x0, call.stride, size, self.settings.views_degrain)
        if not call.replaced:
            large = predicted_x0(main_tensor(output).float(), call.sample.float(), call.alpha_bar, call.prediction_type)
            placed = blend(large, placed, self.settings.views)
        moved = output_for_x0(placed, call.sample.float(), call.alpha_bar, call.prediction_type)
        return replace_main(output, moved.to(call.sample.dtype))

    def forget(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook (always called, last): the call is over."""
        if not self.inner:
            self.call = None
        return output

    # ---------------------------------------------------------------------------- policy

    def stride_for(self, sample: torch.Tensor, timestep: Any, module: nn.Module, kwargs: dict) -> int | None:
        """The views' stride for this call, or None when it runs as the large call (told once
        when the reason is the call's inputs, not its size)."""
        if self.settings.views == 0.0 or sample.ndim != 4 or timestep is None:
            return None
        stride = view_stride((int(sample.shape[-2]), int(sample.shape[-1])), self.reference_size)
        if stride is None:
            if sample.shape[-2] > self.reference_size[0] or sample.shape[-1] > self.reference_size[1]:
                self.tell_once("views_size", "native views act from twice the reference's side; this size runs without")
            return None
        if any(kwargs.get(key) is not None for key in RESIDUAL_KEYS):
            self.tell_once("views_controlnet", "a ControlNet guides the large calls; they run without native views")
            return None
        if sample.shape[1] != module.config.out_channels:
            self.tell_once("views_channels", "the UNet takes concatenated channels; its calls run without native views")
            return None
        return stride


def per_view_arguments(
    views_in: torch.Tensor, batch: int, stride: int, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """The call's arguments for the views: ``views_in`` as the sample, every per-sample tensor
    (the timestep, the prompt, SDXL's added conditioning) repeated per view."""

    def per_view(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
            return repeat_per_view(value, stride)
        if isinstance(value, dict):
            return {key: per_view(item) for key, item in value.items()}
        return value

    views_kwargs = {key: per_view(value) for key, value in kwargs.items()}
    if args:
        return (views_in, *(per_view(value) for value in args[1:])), views_kwargs
    return (), {**views_kwargs, "sample": views_in}
