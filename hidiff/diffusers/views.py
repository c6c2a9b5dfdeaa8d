"""Native views on a diffusers model (:mod:`hidiff.core.native_views`): the guided mode's second half.

The ComfyUI node replaces each large call with the model run on the latent's ``s²``
native-size views; ComfyUI's ``APPLY_MODEL`` hands over x0. A diffusers UNet returns
epsilon, v or x0 as its scheduler is configured and a Flux transformer a velocity on packed
tokens, so each view's output is turned into x0 at the view's own (blurred) input
(:mod:`hidiff.diffusers.calls`), the views are put back in place and degrained, and the call
returns the output whose x0 at its own sample is that prediction. The lock's forward hook
then acts on it, as the node's lock acts after the views.

Only torch hooks on the model, as for the rest of HiDiffusion (so accelerate's hooks, which
replace ``forward``, can come before or after and survive removal):

* a forward pre-hook, first of all: at share 1 it hands the model the views instead of the
  latent (every per-sample argument repeated per view), so the large call is never run;
* a forward hook, before the lock's: turns the views' output into the large call's; below
  share 1 the pre-hook left the large call alone and this hook runs the views itself;
* an ``always_call`` forward hook, last: forgets the call, also when it raised.

While the UNet runs on views, :meth:`NativeViews.runs_views` is true and HiDiffusion's call
state is none (the views are native-size calls, as a native sampler runs them). A call with
ControlNet residuals or concatenated channels, views that a Flux transformer cannot pack
into 2x2 patches, or a size under twice the reference on a side, runs as the large call, and
the run is told once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.native_views import blend, view_stride, views_input, views_prediction
from ..core.settings import GuideSettings
from .calls import Call, CallReader


@dataclass
class ViewsCall:
    """One large call served by native views."""

    large: Call
    """The large call as it was made."""
    views_in: torch.Tensor
    """The views the model denoises (:func:`hidiff.core.native_views.views_input`)."""
    views_args: tuple
    views_kwargs: dict
    """The call's arguments for the views (per-sample ones repeated per view)."""
    stride: int
    replaced: bool
    """The model runs on the views instead of the latent (share 1)."""


class NativeViews:
    """The three hooks of native views on one model, and the call in progress.

    Args:
        reference_size: (height, width) of the native-size latents.
        settings: the views' share, input blur and degrain (the node's defaults unless given).
        reader: reads the model's calls (:mod:`hidiff.diffusers.calls`).
        tell_once: logs a message once per installation, by key.
    """

    def __init__(
        self,
        reference_size: tuple[int, int],
        settings: GuideSettings,
        reader: CallReader,
        tell_once: Callable[[str, str], None],
    ) -> None:
        self.reference_size = reference_size
        self.settings = settings
        self.reader = reader
        self.tell_once = tell_once
        self.call: ViewsCall | None = None
        self.inner = False
        """The views of a call below share 1 are running (a nested model call)."""

    def runs_views(self) -> bool:
        """Whether the model call in progress is on views (HiDiffusion stays off for it)."""
        return self.inner or (self.call is not None and self.call.replaced)

    def call_of(self, args: tuple, kwargs: dict) -> Call | None:
        """The call as it was made (for the lock after the views): the one the pre-hook read,
        else read now (a call the views do not serve)."""
        if self.call is not None and not self.inner:
            return self.call.large
        return self.reader.read(args, kwargs)

    # ------------------------------------------------------------------------- the hooks

    def before(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook: set up the call's views; at share 1, the model's input becomes them."""
        if self.inner:
            return args, kwargs
        self.call = None
        large = self.reader.read(args, kwargs)
        stride = self.stride_for(large, module, kwargs) if large is not None else None
        if stride is None:
            return args, kwargs
        latent = large.latent
        views_in = views_input(latent.float(), stride, large.level, self.settings.views_blur).to(latent.dtype)
        views_args, views_kwargs = self.reader.views_arguments(views_in, latent.shape[0], stride, args, kwargs)
        replaced = self.settings.views >= 1.0  # the large call would be blended away: it is not run
        self.call = ViewsCall(large, views_in, views_args, views_kwargs, stride, replaced)
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
        large, reader = call.large, self.reader
        size = (int(large.latent.shape[-2]), int(large.latent.shape[-1]))
        view_size = (int(call.views_in.shape[-2]), int(call.views_in.shape[-1]))
        x0 = large.prediction.x0(reader.output_latent(views_out, view_size).float(), call.views_in.float())
        placed = views_prediction(x0, call.stride, size, self.settings.views_degrain)
        if not call.replaced:
            own = large.prediction.x0(reader.output_latent(output, size).float(), large.latent.float())
            placed = blend(own, placed, self.settings.views)
        return reader.with_output(output, large.prediction.output_for(placed, large.latent.float()))

    def forget(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """Forward hook (always called, last): the call is over."""
        if not self.inner:
            self.call = None
        return output

    # ---------------------------------------------------------------------------- policy

    def stride_for(self, large: Call, module: nn.Module, kwargs: dict) -> int | None:
        """The views' stride for this call, or None when it runs as the large call (told once
        when the reason is the call's inputs, not its size)."""
        if self.settings.views == 0.0:
            return None
        size = (int(large.latent.shape[-2]), int(large.latent.shape[-1]))
        stride = view_stride(size, self.reference_size)
        if stride is None:
            if size[0] > self.reference_size[0] or size[1] > self.reference_size[1]:
                self.tell_once("views_size", "native views act from twice the reference's side; this size runs without")
            return None
        refused = self.reader.views_refused(large, stride, module, kwargs)
        if refused is not None:
            self.tell_once(*refused)
            return None
        return stride
