"""The guided mode on a diffusers model: the ComfyUI node's low-band lock, on x0.

The lock itself is :mod:`hidiff.core.guide` (the same function and the same
:class:`~hidiff.core.settings.GuideSettings` defaults as the HiDiffusion Hires Fix node).
ComfyUI hands its post-CFG function the denoised prediction; a diffusers UNet returns
epsilon, v or x0 as its scheduler is configured and a Flux transformer a rectified-flow
velocity, so this hook turns the output of each call into x0 (:mod:`hidiff.diffusers.calls`),
locks it, and turns it back. Every conversion is affine in x0 with the same coefficients for
every row of the batch, so locking the unconditional and conditional halves and then
applying classifier-free guidance gives what locking the guided prediction gives.

The weight follows the call's noise level (a UNet's ``timestep / num_train_timesteps``, a
Flux transformer's ``σ``; 1 at pure noise), never the step index. A call no larger than the
reference (the native-size pass) is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.guide import lock_low_band, lock_weight, locked_band, reference_low_band
from ..core.settings import GuideSettings
from .calls import Call, CallReader


def check_reference(reference: Any, channels: int) -> torch.Tensor:
    """``reference`` as a (B, C, H, W) tensor of the UNet's output channels, else an error naming it."""
    if not isinstance(reference, torch.Tensor) or reference.ndim != 4:
        shape = tuple(reference.shape) if isinstance(reference, torch.Tensor) else type(reference).__name__
        raise ValueError(
            f"reference must be the native-size latents as a (batch, {channels}, height, width) tensor, "
            f"as pipe(..., output_type='latent').images gives; got {shape}"
        )
    if reference.shape[1] != channels:
        raise ValueError(
            f"reference has {reference.shape[1]} channels; this UNet's latents have {channels} "
            "(pass latents, not an image: encode an image with pipe.vae and scale by vae.config.scaling_factor)"
        )
    return reference.detach().clone()


class LowBandLockHook:
    """A model forward hook: the output of every call larger than the reference, with its x0's
    low band moved towards the upscaled reference's (:func:`hidiff.core.guide.lock_low_band`).

    Args:
        reference: the native-size latents (B, C, h, w) in the pipeline's latent space; kept,
            never changed. Its size is the band the lock holds (``cutoff`` of it).
        settings: strength, exponent, low-pass and cutoff (the node's defaults unless given).
        reader: reads the model's calls (:class:`~hidiff.diffusers.calls.UNetCalls` or
            :class:`~hidiff.diffusers.calls.FluxCalls`).
    """

    def __init__(self, reference: torch.Tensor, settings: GuideSettings, reader: CallReader) -> None:
        self.reference = reference
        self.settings = settings
        self.reader = reader
        self.band = locked_band((int(reference.shape[-2]), int(reference.shape[-1])), settings.cutoff)
        self._low: dict[tuple, torch.Tensor] = {}
        self.call_of: Callable[[tuple, dict], Call | None] = reader.read
        """The call as it was made (the native views, which may hand the model their views
        instead, set their own)."""
        self.on_unread: Callable[[], None] | None = None
        """Called for a call the reader cannot read, which runs as it is (to tell the run once)."""

    def __call__(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        call = self.call_of(args, kwargs)
        if call is None:
            if self.on_unread is not None:
                self.on_unread()
            return output
        height, width = int(call.latent.shape[-2]), int(call.latent.shape[-1])
        if not self.applies_to(height, width):
            return output
        weight = lock_weight(call.level, self.settings)
        if weight == 0.0:
            return output
        prediction = self.reader.output_latent(output, (height, width)).float()
        x0 = call.prediction.x0(prediction, call.latent.float())
        target = self.reference_low(height, width, x0)
        locked = lock_low_band(x0, target, weight, self.band, self.settings.lowpass)
        return self.reader.with_output(output, call.prediction.moved(prediction, locked - x0))

    def applies_to(self, height: int, width: int) -> bool:
        """Whether a call of this latent size is locked: larger than the reference and of its
        aspect ratio (else an error: the reference does not fit the image)."""
        ref_height, ref_width = int(self.reference.shape[-2]), int(self.reference.shape[-1])
        if height <= ref_height and width <= ref_width:
            return False
        if abs(height * ref_width - width * ref_height) > max(ref_width, ref_height):
            raise ValueError(
                f"reference is {ref_width}x{ref_height} latent px but the pipeline samples {width}x{height}: "
                f"pass a reference of the same aspect ratio (for this width, {round(width * ref_height / ref_width)} "
                "latent px high)"
            )
        return True

    def reference_low(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The reference upscaled (bicubic, as the node's default) to the call's size and
        low-passed, repeated to the call's batch; worked out once per size and batch."""
        batch, references = like.shape[0], self.reference.shape[0]
        if batch % references:
            raise ValueError(f"reference has {references} latents, which do not divide the UNet's batch of {batch}")
        key = (height, width, batch, like.device)
        if key not in self._low:
            reference = self.reference.to(like.device, torch.float32)
            self._low[key] = reference_low_band(reference, (height, width), self.band, self.settings.lowpass, batch)
        return self._low[key]
