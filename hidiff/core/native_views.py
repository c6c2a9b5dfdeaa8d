"""Native views: the large latent seen at the model's own scale, DemoFusion's dilated sampling.

Far above its native size a model draws its trained-size features on an enlarged
subject: at 4x the side a head is 16 times the area it was trained on, and the model
covers it in eyes of the trained size. Measured in the quality lab (SD1.5 layout, 4x):
the low-band lock keeps one subject, but holding any band of the reference, even the
whole image, until late in the schedule still leaves the specks; they are drawn at low
noise, where the model refines what it sees at its own scale.

DemoFusion (arXiv 2311.16973, §3.4) denoises the large latent also as ``s²`` interleaved
sub-latents ``x[..., i::s, j::s]``, each a native-size view of the whole image in which the
subject has its trained size; the views' predictions, put back in place, are blended
into the large prediction:

    x0' = (1 − w)·x0_large + w·interleave(x0(view_ij))

Each view of a noisy latent is a noisy native image at the same sigma (the noise of
every pixel is kept), so the views need no other noise level. They cost ``s²`` native-size
calls, about the tokens of one large call with native-size attention.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional


def view_stride(size: tuple[int, int], native: tuple[int, int]) -> int | None:
    """The stride ``s`` that cuts a ``size`` latent into views at least the ``native`` size: the
    whole part of the smaller side ratio, when it is at least 2 (below, the subject is drawn
    near its trained size and needs no views); else None."""
    stride = int(min(size[0] / native[0], size[1] / native[1]) + 1e-6)
    return stride if stride >= 2 else None


def padding_for(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Rows and columns added at the bottom and right so both sides divide by ``stride``."""
    return -size[0] % stride, -size[1] % stride


def padded(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``x`` mirrored at the bottom and right up to sides that divide by ``stride``."""
    rows, cols = padding_for((x.shape[-2], x.shape[-1]), stride)
    if rows == 0 and cols == 0:
        return x
    return functional.pad(x, (0, cols, 0, rows), mode="reflect")


def to_views(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, C, H, W) as (B·s², C, H/s, W/s): view ``(i, j)`` of image ``b`` is ``x[b, :, i::s, j::s]``
    at row ``b·s² + i·s + j`` (each image's views together, so batch chunks stay contiguous)."""
    batch, channels, height, width = x.shape
    views = x.reshape(batch, channels, height // stride, stride, width // stride, stride)
    return views.permute(0, 3, 5, 1, 2, 4).reshape(batch * stride * stride, channels, height // stride, width // stride)


def from_views(views: torch.Tensor, stride: int) -> torch.Tensor:
    """The inverse of :func:`to_views`."""
    count, channels, height, width = views.shape
    batch = count // (stride * stride)
    grid = views.reshape(batch, stride, stride, channels, height, width).permute(0, 3, 4, 1, 5, 2)
    return grid.reshape(batch, channels, height * stride, width * stride)


def repeat_per_view(value: torch.Tensor, stride: int) -> torch.Tensor:
    """A per-image tensor (batch first) repeated for each image's ``s²`` views, in view order."""
    return value.repeat_interleave(stride * stride, dim=0)


def blend_views(large: torch.Tensor, views: torch.Tensor, stride: int, weight: float) -> torch.Tensor:
    """``(1 − weight)·large + weight·from_views(views)``."""
    if weight == 0.0:
        return large
    return torch.lerp(large, from_views(views, stride).to(large.dtype), weight)


def cosine_ramp(noise_level: float) -> float:
    """DemoFusion's ``cos_f``: ``½(1 + cos(π(1 − level)))``, 1 at pure noise and 0 when clean."""
    level = min(max(noise_level, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * (1.0 - level)))


def views_weight(noise_level: float, strength: float, exponent: float) -> float:
    """The views' share at a noise level: ``strength · cos_f^exponent`` (DemoFusion's c2, α2 = 1)."""
    return strength * cosine_ramp(noise_level) ** exponent


def blur_sigma(noise_level: float, blur: float, floor: float = 0.01) -> float:
    """The Gaussian's sigma for the views' input: ``blur · ((1 − floor) · cos_f + floor)``
    (DemoFusion's c3 with α3 = 1 and floor 0.01)."""
    return blur * ((1.0 - floor) * cosine_ramp(noise_level) + floor)


def gaussian_low(x: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """``x`` (B, C, H, W) through a separable Gaussian of kernel ``2·stride − 1`` and ``sigma``
    (reflect padding): what survives of the views' lattice grain, whose period is the stride."""
    if sigma <= 0.0 or stride < 2:
        return x
    radius = min(stride - 1, x.shape[-1] - 1, x.shape[-2] - 1)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    padded = functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = functional.conv2d(padded, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return functional.conv2d(rows, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def gaussian_blur(x: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """:func:`gaussian_low` of ``x``, re-standardised to each image's own mean and std.

    Why: the ``s²`` views of a latent are disjoint pixel lattices; denoised from the raw latent
    each draws its own fine detail and the interleaved result is grain. Blurred first, every
    view sees its neighbours' content and the views agree (DemoFusion §3.4); the re-standardising
    keeps the noise level the sampler's sigma says it is."""
    if sigma <= 0.0 or stride < 2:
        return x
    blurred = gaussian_low(x, stride, sigma)
    dims = (1, 2, 3)
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    b_mean, b_std = blurred.mean(dim=dims, keepdim=True), blurred.std(dim=dims, keepdim=True)
    return (blurred - b_mean) / b_std.clamp_min(1e-6) * std + mean


def blend_views_low(large: torch.Tensor, views: torch.Tensor, stride: int, weight: float, sigma: float) -> torch.Tensor:
    """``large + weight·(G(from_views(views)) − G(large))``: the views' structure in the band a
    Gaussian keeps, the large call's own finer detail above it (no lattice grain)."""
    if weight == 0.0:
        return large
    placed = from_views(views, stride).to(large.dtype)
    return large + weight * (gaussian_low(placed, stride, sigma) - gaussian_low(large, stride, sigma))


def degrain(placed: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """The interleaved views' prediction without the views' own smooth offsets.

    Each view drawn on its own lattice differs from its neighbours by a smooth field; put
    back in place those fields are a grid of period ``stride``. The residual of ``placed``
    above a large-scale Gaussian is cut back into views, low-passed there (the per-view
    offsets) and taken out; what varies from pixel to pixel within a view stays."""
    smooth = gaussian_low(placed, stride, sigma * stride / 2)
    offsets = gaussian_low(to_views(placed - smooth, stride), stride, sigma)
    return placed - from_views(offsets, stride)
