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

import torch


def view_stride(size: tuple[int, int], native: tuple[int, int]) -> int | None:
    """The stride ``s`` that cuts a ``size`` latent into native-size views: the whole ratio
    of the sides, when both sides divide by it and it is at least 2; else None."""
    stride = round(min(size[0] / native[0], size[1] / native[1]))
    if stride < 2 or size[0] % stride or size[1] % stride:
        return None
    return stride


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
