"""RAU-Net's operators as pure tensor functions (method.md §1.1).

* RAD, the resolution-aware downsampler, is HiDiffusion's stride-4, dilation-2,
  padding-2 variant of a Downsample's 3x3 conv. That conv reads exactly the pixels the
  stock stride-2, padding-1 conv reads on ``x[..., ::2, ::2]`` (output o sees inputs
  4o-2, 4o, 4o+2 in both cases, zeros outside), so RAD runs the model's own layer on
  the strided view. Quantised, LoRA-patched, cast or offloaded weights need no special
  case, and the output is ceil(H/4) x ceil(W/4) at every size.
* RAU, the resolution-aware upsampler, brings the map back to the exact size of the
  skip it is concatenated with, optionally in two stages.
* The "CA" branch (named after the CrossAttn container blocks it sits in; it touches no
  attention) shrinks the map after an input block and restores it, at the paired output
  block, to the exact size of the skip.

Sizes are always taken from tensors, never computed by arithmetic from the latent, so
odd and non-square sizes round-trip exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)

UPSCALE_METHODS = ("bicubic", "bislerp", "bilinear", "nearest-exact", "nearest", "area")
"""Resampling methods, in the seed pack's order (saved workflows store the names)."""
TORCH_METHODS = tuple(m for m in UPSCALE_METHODS if m != "bislerp")
"""The methods torch's ``interpolate`` runs; any other is the host's."""
TWO_STAGE_MODES = ("disabled", *UPSCALE_METHODS)
CA_DOWNSCALE_METHODS = ("avg_pool2d", "adaptive_avg_pool2d", *UPSCALE_METHODS)

HostResize = Callable[[torch.Tensor, int, int, str], torch.Tensor]
"""The host's resampler for methods torch lacks, called as ``host(x, height, width, mode)``."""

_SIZE_TOLERANCE = 1e-6
"""Sizes are ceil(size / factor); a factor such as 1/0.3 must not round 3.0000001 up."""


class ResizeError(ValueError):
    """A resampling method that cannot be used here."""


def resolution_aware_downsample(layer_call: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """RAD: the model's own stride-2, padding-1 Downsample applied to every other pixel.

    Bit-identical to ``conv2d(x, w, b, stride=4, padding=2, dilation=2)`` with the same
    weights, without touching the layer.
    """
    return layer_call(x[..., ::2, ::2])


def rad_size(size: int) -> int:
    """Output side of RAD for an input side: ceil(size / 4)."""
    return -(-size // 4)


def resize(x: torch.Tensor, height: int, width: int, mode: str, host: HostResize | None = None) -> torch.Tensor:
    """Resample ``x`` (N, C, H, W) to exactly ``height`` x ``width`` with ``mode``.

    Methods outside torch (``bislerp``, spherical bilinear, is ComfyUI's
    ``comfy.utils.bislerp``; ComfyUI-bleh adds more) go to ``host``, which the adapter
    passes in, so this module stays host-free.
    """
    if tuple(x.shape[-2:]) == (height, width):
        return x
    if mode in TORCH_METHODS:
        return F.interpolate(x, size=(height, width), mode=mode)
    if host is not None:
        return host(x, height, width, mode)
    if mode == "bislerp":
        raise ResizeError("bislerp needs the host's implementation; none was given")
    raise ResizeError(f"resampling method {mode!r} is not valid; use one of {', '.join(UPSCALE_METHODS)}")


def halfway_size(size: int, target: int) -> int:
    """The intermediate side of a two-stage resize: half the target, rounded up.

    Never below the input side, so the first stage never shrinks the map.
    """
    return max(size, -(-target // 2))


def upscale(
    x: torch.Tensor,
    height: int,
    width: int,
    mode: str,
    two_stage_mode: str = "disabled",
    host: HostResize | None = None,
) -> torch.Tensor:
    """RAU's resample to the exact skip size, optionally in two stages.

    With a two-stage mode, the map first goes to half the target (ceil) with
    ``two_stage_mode``, then the rest of the way with ``mode``, as the seed pack does.
    """
    if two_stage_mode != "disabled":
        mid_h, mid_w = halfway_size(x.shape[-2], height), halfway_size(x.shape[-1], width)
        x = resize(x, mid_h, mid_w, two_stage_mode, host)
    return resize(x, height, width, mode, host)


def downscaled_size(size: int, factor: float) -> int:
    """The side after downscaling by ``factor``: ceil(size / factor), never below 1.

    Ceil matches ``avg_pool2d(kernel=stride=factor, ceil_mode=True)``, the official
    pooling, so every CA downscale method gives the same size for the same factor.
    """
    return max(1, math.ceil(size / factor - _SIZE_TOLERANCE))


def is_whole(factor: float) -> bool:
    """Whether ``factor`` can be an avg_pool2d kernel."""
    return float(factor).is_integer()


def ca_downscale(
    x: torch.Tensor,
    factor_h: float,
    factor_w: float,
    mode: str,
    host: HostResize | None = None,
) -> torch.Tensor:
    """Shrink the map by ``factor_h`` x ``factor_w`` (each at least 1) with ``mode``.

    ``avg_pool2d`` pools with kernel = stride = factor and ``ceil_mode=True`` (the
    official operator; the border windows average only the pixels they cover). It needs
    whole factors; a fractional factor (mid-fadeout) falls back to
    ``adaptive_avg_pool2d``, which is the same average on a fractional grid.
    ``adaptive_avg_pool2d`` and the resampling methods go to ceil(size / factor).
    """
    height, width = x.shape[-2:]
    target_h, target_w = downscaled_size(height, factor_h), downscaled_size(width, factor_w)
    if (target_h, target_w) == (height, width):
        return x
    if mode == "avg_pool2d" and is_whole(factor_h) and is_whole(factor_w):
        kernel = (min(int(factor_h), height), min(int(factor_w), width))
        return F.avg_pool2d(x, kernel_size=kernel, stride=kernel, ceil_mode=True)
    if mode in ("avg_pool2d", "adaptive_avg_pool2d"):
        return F.adaptive_avg_pool2d(x, (target_h, target_w))
    return resize(x, target_h, target_w, mode, host)


def fadeout_strength(percent: float, fade_start: float | None, end: float, cap: float = 0.0) -> float:
    """How much of the CA downscale is left at sampling ``percent`` (1 = all, 0 = none).

    The seed pack's fadeout, in sampling-percent space: full strength before
    ``fade_start``, then a straight line to 0 at ``end`` (the CA end time), never below
    ``cap``. No fadeout (``fade_start`` None, or not before ``end``) is full strength.
    """
    if fade_start is None or end <= fade_start or percent <= fade_start:
        return 1.0
    remaining = 1.0 - (percent - fade_start) / (end - fade_start)
    return min(1.0, max(cap, remaining))


def faded_factor(factor: float, strength: float) -> float:
    """A downscale factor moved towards 1 (no downscale) by ``1 - strength``."""
    return 1.0 + (factor - 1.0) * strength


def sigma_to_percent(sigma: float, percent_to_sigma: Callable[[float], float], iterations: int = 48) -> float:
    """Invert a model's (decreasing) ``percent_to_sigma`` by bisection.

    Works for every model sampling, discrete or continuous, without relying on its
    ``timestep`` scale (0-999 for SD, log-sigma for EDM models).
    """
    low, high = 0.0, 1.0
    for _ in range(iterations):
        mid = (low + high) / 2
        if percent_to_sigma(mid) > sigma:
            low = mid
        else:
            high = mid
    return (low + high) / 2
