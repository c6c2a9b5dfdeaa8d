"""Native views: the large latent denoised at the model's own scale (DemoFusion's dilated sampling).

Far above its native size a model draws its trained-size features on an enlarged subject:
at 4x the side a head is 16 times the area it was trained on, and the model covers it in
eyes of the trained size. The low-band lock keeps one subject but not its local structure;
in the quality lab no band, schedule or attention map of the large call kept two eyes.

DemoFusion (arXiv 2311.16973, §3.4) denoises the large latent also as ``s²`` interleaved
sub-latents ``x[..., i::s, j::s]``: each is a native-size view of the whole image in which the
subject has its trained size, so each view draws one head with two eyes, and put back in
place they draw that head at the large size. Each view of a noisy latent is a noisy native
image at the same sigma, so the views need no other noise level. Per call:

    views_in = restandardise(G(x, 2s − 1, blur · (0.99 · cos_f + 0.01)))   (DemoFusion's c3; per channel)
    placed   = interleave(x0(views_in[..., i::s, j::s]))
    x0'      = (1 − w) · x0_large + w · degrain(placed)

Views drawn on disjoint lattices leave a grid of period ``s`` (each view is offset from its
neighbours by a smooth field). DemoFusion blurs the views' input and fades the views out
for local patches; in the lab, fading them out let the large call draw its specks again,
so the views stay at their share to the end and :func:`degrain` takes the per-view offsets
out instead. They cost ``s²`` native-size calls per call, about the tokens of one large
call with native-size attention; at share 1 the large call is skipped.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

INPUT_BLUR_FLOOR = 0.01
"""The views' input blur when clean, as a fraction of its value at pure noise (DemoFusion's c3)."""


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


def cosine_ramp(noise_level: float) -> float:
    """DemoFusion's ``cos_f``: ``½(1 + cos(π(1 − level)))``, 1 at pure noise and 0 when clean."""
    level = min(max(noise_level, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * (1.0 - level)))


def input_blur(noise_level: float, blur: float) -> float:
    """The Gaussian's sigma for the views' input: ``blur · (0.99 · cos_f + 0.01)``."""
    return blur * ((1.0 - INPUT_BLUR_FLOOR) * cosine_ramp(noise_level) + INPUT_BLUR_FLOOR)


def gaussian_low(x: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """``x`` (B, C, H, W) through a separable Gaussian of kernel ``2·stride − 1`` (at most the
    sides allow) and ``sigma``, borders mirrored."""
    if sigma <= 0.0 or stride < 2:
        return x
    radius = min(stride - 1, x.shape[-1] - 1, x.shape[-2] - 1)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    channels = x.shape[1]
    out = functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = functional.conv2d(out, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return functional.conv2d(out, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def gaussian_blur(x: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """:func:`gaussian_low` of ``x``, re-standardised to each channel's own mean and std.

    Why: the views are disjoint pixel lattices; from the raw latent each would draw its own
    detail. Blurred first, every view sees its neighbours' content and the views agree
    (DemoFusion §3.4); re-standardised, the input keeps the noise level its sigma says.
    Per channel, not per image as DemoFusion does: one factor for all channels scales each
    channel's offset from the image's mean too, and the views then drew that offset larger.
    Measured with the lab's sampler (``lab.sample_batch``, seeds 0-7, 3x, the node's defaults;
    the appearance channel's background mean of seed 0, native -> per image -> per channel):
    0.63 -> 1.15 -> 0.57 on the SDXL layout, 0.36 -> 1.47 -> 0.19 on SD1.5 (per image a colour
    cast on every seed; per channel the native means within about 0.25). The ComfyUI tier
    checks it on fresh seeds (``tests/comfy/test_quality_weights.py``)."""
    if sigma <= 0.0 or stride < 2:
        return x
    blurred = gaussian_low(x, stride, sigma)
    dims = (2, 3)
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
    b_mean, b_std = blurred.mean(dim=dims, keepdim=True), blurred.std(dim=dims, keepdim=True)
    return (blurred - b_mean) / b_std.clamp_min(1e-6) * std + mean


def degrain(placed: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """The interleaved views' prediction without the views' own smooth offsets.

    Each view differs from its neighbours by a smooth field; put back in place those fields
    are a grid of period ``stride``. The residual of ``placed`` above a Gaussian of
    ``sigma · stride / 2`` is cut back into views, low-passed there (sigma ``sigma``: the
    per-view offsets) and taken out; what varies from pixel to pixel within a view stays.
    A smaller sigma takes out more (at 0.5 the lab's subjects came out flat)."""
    if sigma <= 0.0:
        return placed
    smooth = gaussian_low(placed, stride, sigma * stride / 2)
    offsets = gaussian_low(to_views(placed - smooth, stride), stride, sigma)
    return placed - from_views(offsets, stride)


def views_input(x: torch.Tensor, stride: int, noise_level: float, blur: float) -> torch.Tensor:
    """The ``s²`` views the model denoises for a large latent ``x`` at ``noise_level``:
    blurred, mirrored up to sides that divide by ``stride``, cut (see :func:`to_views`)."""
    return to_views(padded(gaussian_blur(x, stride, input_blur(noise_level, blur)), stride), stride)


def views_prediction(views: torch.Tensor, stride: int, size: tuple[int, int], degrain_sigma: float) -> torch.Tensor:
    """The views' prediction put back in place, degrained and cropped to ``size``."""
    placed = degrain(from_views(views, stride), stride, degrain_sigma)
    return placed[..., : size[0], : size[1]]


def blend(large: torch.Tensor, placed: torch.Tensor, share: float) -> torch.Tensor:
    """``(1 − share)·large + share·placed``."""
    return torch.lerp(large, placed.to(large.dtype), share)
