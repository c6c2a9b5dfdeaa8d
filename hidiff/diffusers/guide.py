"""The guided mode on a diffusers UNet: the ComfyUI node's low-band lock, on x0.

The lock itself is :mod:`hidiff.core.guide` (the same function and the same
:class:`~hidiff.core.settings.GuideSettings` defaults as the HiDiffusion Hires Fix node).
ComfyUI hands its post-CFG function the denoised prediction; a diffusers UNet returns
epsilon, v or x0 as its scheduler is configured, so this hook turns the output of each call
into x0 with the scheduler's ``alphas_cumprod`` at the call's timestep, locks it, and turns
it back. Every conversion is affine in x0 with the same coefficients for every row of the
batch, so locking the unconditional and conditional halves and then applying classifier-free
guidance gives what locking the guided prediction gives.

The weight follows the noise level ``timestep / num_train_timesteps`` (1 at pure noise),
never the step index. A call no larger than the reference (the native-size pass) is left
as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.guide import lock_low_band, lock_weight, locked_band, reference_low_band
from ..core.settings import GuideSettings
from .hooks import main_tensor, replace_main, sample_and_timestep
from .position import timestep_value

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


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


def predicted_x0(output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """x0 from a UNet output at the noisy ``sample`` (the variance-preserving x_t)."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (sample - s * output) / a
    if prediction_type == "v_prediction":
        return a * sample - s * output
    if prediction_type == "sample":
        return output
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; valid: {', '.join(PREDICTION_TYPES)}")


def output_for_x0(x0: torch.Tensor, sample: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """The UNet output whose x0 at ``sample`` is ``x0`` (the inverse of :func:`predicted_x0`)."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return (sample - a * x0) / s
    if prediction_type == "v_prediction":
        return (a * sample - x0) / s
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type {prediction_type!r} is not supported; valid: {', '.join(PREDICTION_TYPES)}")


def output_moved(output: torch.Tensor, x0_change: torch.Tensor, alpha_bar: float, prediction_type: str) -> torch.Tensor:
    """The UNet output whose x0 is ``x0_change`` away from that of ``output`` (same x_t)."""
    a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    if prediction_type == "epsilon":
        return output - (a / s) * x0_change
    if prediction_type == "v_prediction":
        return output - x0_change / s
    return output + x0_change


class LowBandLockHook:
    """A UNet forward hook: the output of every call larger than the reference, with its x0's
    low band moved towards the upscaled reference's (:func:`hidiff.core.guide.lock_low_band`).

    Args:
        reference: the native-size latents (B, C, h, w) in the pipeline's latent space; kept,
            never changed. Its size is the band the lock holds (``cutoff`` of it).
        settings: strength, exponent, low-pass and cutoff (the node's defaults unless given).
        scheduler_of: the scheduler whose ``alphas_cumprod`` and ``prediction_type`` apply.
    """

    def __init__(self, reference: torch.Tensor, settings: GuideSettings, scheduler_of: Callable[[], Any]) -> None:
        self.reference = reference
        self.settings = settings
        self.scheduler_of = scheduler_of
        self.band = locked_band((int(reference.shape[-2]), int(reference.shape[-1])), settings.cutoff)
        self._low: dict[tuple, torch.Tensor] = {}
        self.input_of: Callable[[tuple, dict], tuple[torch.Tensor, Any]] = sample_and_timestep
        """The sample and timestep of the call as it was made (the native views, which may
        hand the UNet their views instead, set their own)."""

    def __call__(self, module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        sample, timestep = self.input_of(args, kwargs)
        height, width = int(sample.shape[-2]), int(sample.shape[-1])
        if not self.applies_to(height, width) or timestep is None:
            return output
        scheduler = self.scheduler_of()
        level = timestep_value(timestep) / scheduler.config.num_train_timesteps
        weight = lock_weight(level, self.settings)
        if weight == 0.0:
            return output
        prediction = main_tensor(output)
        alpha_bar = alpha_bar_at(scheduler, timestep_value(timestep))
        prediction_type = scheduler.config.prediction_type
        x0 = predicted_x0(prediction.float(), sample.float(), alpha_bar, prediction_type)
        target = self.reference_low(height, width, x0)
        locked = lock_low_band(x0, target, weight, self.band, self.settings.lowpass)
        moved = output_moved(prediction.float(), locked - x0, alpha_bar, prediction_type)
        return replace_main(output, moved.to(prediction.dtype))

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


def alpha_bar_at(scheduler: Any, timestep: float) -> float:
    """``alphas_cumprod`` at a (possibly fractional) timestep, interpolated linearly."""
    table = scheduler.alphas_cumprod
    last = len(table) - 1
    t = min(max(timestep, 0.0), float(last))
    low = int(t)
    high = min(low + 1, last)
    fraction = t - low
    return float(table[low]) * (1.0 - fraction) + float(table[high]) * fraction
