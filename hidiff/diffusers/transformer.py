"""The guided mode on a diffusers DiT (Flux, SD3): the lock and the native views, no HiDiffusion.

RAU-Net and MSW-MSA reshape a UNet's levels and its windowed self-attention; a DiT has
neither, so on a ``FluxTransformer2DModel`` or an ``SD3Transformer2DModel`` the guided hires
fix is what the ComfyUI node does on a non-UNet: the native views and the low-band lock, read
through :class:`~hidiff.diffusers.calls.FluxCalls` (packed 2x2-patch tokens) or
:class:`~hidiff.diffusers.calls.SD3Calls` (the latent as it is): rectified-flow velocity,
``σ`` as the noise level. Only torch forward hooks on the transformer, in the order the UNet's
guided mode registers them (:mod:`hidiff.diffusers.install`), all removed by
:meth:`GuidedTransformer.detach`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..core.settings import GuideSettings
from ..log import logger
from .calls import CallReader, FluxCalls, SD3Calls
from .guide import LowBandLockHook, check_reference
from .structure import UnsupportedModelError
from .views import NativeViews

GUIDED_TRANSFORMERS = ("FluxTransformer2DModel", "SD3Transformer2DModel")
"""The DiT classes the guided mode reads."""


def is_flux(model: Any) -> bool:
    from diffusers import FluxTransformer2DModel

    return isinstance(model, FluxTransformer2DModel)


def is_guided_transformer(model: Any) -> bool:
    """Whether ``model`` is a DiT the guided mode reads (see :data:`GUIDED_TRANSFORMERS`)."""
    from diffusers import SD3Transformer2DModel

    return is_flux(model) or isinstance(model, SD3Transformer2DModel)


def latent_channels(transformer: nn.Module) -> int:
    """The channels of a DiT's latents (a Flux transformer's tokens are 2x2 patches of them)."""
    channels = int(transformer.config.in_channels)
    return channels // 4 if is_flux(transformer) else channels


def patch_side(transformer: nn.Module) -> int:
    """The side of the patches the transformer cuts the latent into (every size is a multiple)."""
    return 2 if is_flux(transformer) else int(transformer.config.patch_size)


def call_reader(transformer: nn.Module, scheduler_of: Callable[[], Any]) -> CallReader:
    """How the guided mode reads this transformer's calls."""
    if is_flux(transformer):
        return FluxCalls()
    return SD3Calls(scheduler_of, patch_side(transformer))


class GuidedTransformer:
    """The lock and the native views installed on one transformer; :meth:`detach` removes them.

    Args:
        transformer: a ``FluxTransformer2DModel`` or an ``SD3Transformer2DModel``.
        reference: the native-size latents (batch, channels, height, width), unpacked.
        settings: the lock's and the views' settings (the node's defaults unless given).
        scheduler_of: the pipeline's scheduler (SD3's timestep is in its training steps).
    """

    def __init__(
        self,
        transformer: nn.Module,
        reference: torch.Tensor,
        settings: GuideSettings | None,
        scheduler_of: Callable[[], Any],
    ) -> None:
        if not is_guided_transformer(transformer):
            raise UnsupportedModelError(
                f"{type(transformer).__name__} is not a transformer the guided mode reads; it reads "
                f"{', '.join(GUIDED_TRANSFORMERS)}"
            )
        settings = settings or GuideSettings()
        self.transformer = transformer
        self._told: set[str] = set()
        reader = call_reader(transformer, scheduler_of)
        self.lock = LowBandLockHook(check_reference(reference, latent_channels(transformer)), settings, reader)
        self.lock.on_unread = lambda: self._tell_once(
            "unread",
            f"{type(transformer).__name__} was called with what the guided mode cannot read (tokens that are not "
            "one plain image grid, such as a reference image's appended, or arguments by position); those calls "
            "run without the lock and the native views",
        )
        self.views = None
        if settings.views > 0.0:
            size = (int(reference.shape[-2]), int(reference.shape[-1]))
            self.views = NativeViews(size, settings, reader, self._tell_once)
            self.lock.call_of = self.views.call_of
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> None:
        """Register the hooks: the views' first (at share 1 the input becomes the views), the
        lock after the views' output, the views' forgetting last (always called)."""
        model, views = self.transformer, self.views
        if views is not None:
            self._handles.append(model.register_forward_pre_hook(views.before, with_kwargs=True))
            self._handles.append(model.register_forward_hook(views.after, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self.lock, with_kwargs=True))
        if views is not None:
            self._handles.append(model.register_forward_hook(views.forget, with_kwargs=True, always_call=True))
        logger.info(
            f"{type(model).__name__} is not a UNet: the guided hires fix runs the lock"
            f"{' and the native views' if views is not None else ''} without RAU-Net and MSW-MSA"
        )

    def detach(self) -> None:
        """Remove every hook, newest first: the transformer is as before :meth:`attach`."""
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()

    def _tell_once(self, key: str, message: str) -> None:
        if key not in self._told:
            self._told.add(key)
            logger.info(message)
