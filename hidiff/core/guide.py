"""The low-band lock of the guided hires fix: one subject at 3-4x the side.

Sampled far above its native size, a model composes several subjects; sampled at its
native size it composes one. The guided methods that keep one subject at 4x (DemoFusion's
skip residual, DiffuseHigh's wavelet guidance, FAM's frequency modulation, FreeScale's
scale fusion) all lock the low frequencies of the high-resolution image to an upscaled
native image and leave the high frequencies free. This is that lock, on the denoised
prediction (x0) of every model call, so any sampler, multistep ones included, keeps its
own update:

    denoised' = denoised + g · (low(reference) − low(denoised))

``low`` keeps the band the reference itself has: its own size, which need not be the
model's native size (a 1024 px image upscaled to 4096 px is a valid SDXL reference).
``g`` follows the absolute noise level, never the step index, so every denoise and every
sampler see the same lock at the same noise: DemoFusion's cosine weight
``(½(1 + cos(π(1 − level))))^exponent``, 1 at pure noise and 0 at the end.
The lock is linear in ``denoised``, so locking the CFG result equals locking the cond and
uncond predictions separately and then applying CFG.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from .settings import GuideSettings

LOWPASS_MODES = ("resize", "fft")
"""``resize``: area-resize to the reference's size and bicubic back; ``fft``: a box on the 2-D
spectrum that keeps the frequencies a reference of that size can hold."""


def upscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The (height, width) of a latent ``scale`` times larger, rounded as ComfyUI's Upscale
    Latent By rounds it; the ComfyUI node and the diffusers ``upscale`` both size their
    second pass with it."""
    return round(height * scale), round(width * scale)


def upscale_reference(reference: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``reference`` bicubic-upscaled to ``size``: the second pass's starting latent and the
    image the lock's band comes from (bicubic is the node's default upscale method)."""
    return functional.interpolate(reference, size=size, mode="bicubic", align_corners=False)


def lock_weight(noise_level: float, settings: GuideSettings) -> float:
    """``g`` at a noise level in [0, 1] (1 = pure noise, 0 = clean: 1 − the sampling percent, or
    sigma itself on a rectified-flow model)."""
    level = min(max(noise_level, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (1.0 - level)))
    return settings.strength * cosine**settings.exponent


def locked_band(band: tuple[int, int], cutoff: float) -> tuple[int, int]:
    """The (height, width) band the lock holds: ``cutoff`` of the reference's ``band``, at least 1."""
    return max(1, round(band[0] * cutoff)), max(1, round(band[1] * cutoff))


def low_band(x: torch.Tensor, band: tuple[int, int], mode: str) -> torch.Tensor:
    """The part of ``x`` (B, C, H, W) a ``band`` = (height, width) image can hold, at x's size."""
    height, width = x.shape[-2:]
    if mode == "resize":
        small = functional.interpolate(x, size=band, mode="area")
        return functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)
    if mode == "fft":
        spectrum = torch.fft.rfft2(x.float())
        rows = torch.fft.fftfreq(height, d=1.0 / height, device=x.device).abs() <= band[0] / 2
        cols = torch.fft.rfftfreq(width, d=1.0 / width, device=x.device) <= band[1] / 2
        mask = rows[:, None] & cols[None, :]
        return torch.fft.irfft2(spectrum * mask, s=(height, width)).to(x.dtype)
    raise ValueError(f"unknown low-pass {mode!r}; valid: {', '.join(LOWPASS_MODES)}")


def reference_low_band(
    reference: torch.Tensor, size: tuple[int, int], band: tuple[int, int], mode: str, batch: int
) -> torch.Tensor:
    """What the lock moves a call's low band towards: :func:`low_band` of ``reference``
    (bicubic-upscaled first when it is not at ``size``), repeated to the call's ``batch``,
    which the reference's batch must divide."""
    if tuple(reference.shape[-2:]) != tuple(size):
        reference = upscale_reference(reference, size)
    low = low_band(reference, band, mode)
    return low.repeat(batch // low.shape[0], 1, 1, 1)


def lock_low_band(
    denoised: torch.Tensor,
    reference_low: torch.Tensor,
    weight: float,
    band: tuple[int, int],
    mode: str,
) -> torch.Tensor:
    """``denoised`` with its low band moved ``weight`` of the way to ``reference_low``
    (:func:`low_band` of the upscaled reference, same size; batch 1 or the same batch)."""
    if weight == 0.0:
        return denoised
    return denoised + weight * (reference_low - low_band(denoised, band, mode))
