"""Independent reference implementations used by both test tiers."""

from __future__ import annotations

import math

import torch
from torch.nn import functional


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int = 1) -> torch.Tensor:
    """Softmax attention over (B, N, heads * d) tensors, one head at a time."""
    batch, tokens, width = q.shape
    dim = width // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, dim).transpose(1, 2)

    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(dim), dim=-1)
    return (weights @ split(v)).transpose(1, 2).reshape(batch, tokens, width)


def naive_windowed(
    q, k, v, height: int, width: int, shift_index: int, heads: int = 1, rows: int = 2, cols: int = 2
) -> torch.Tensor:
    """MSW-MSA written from the method text, independent of the implementation: roll the
    grid by -(window // 4) * k, cut it into rows x cols windows of ceil(H/rows) x
    ceil(W/cols) (2x2 in the method), and let each token attend to exactly the tokens of
    its own window."""
    win_h, win_w = math.ceil(height / rows), math.ceil(width / cols)
    shift_h, shift_w = (win_h // 4) * shift_index, (win_w // 4) * shift_index
    out = torch.empty_like(q)
    window_of: dict[tuple[int, int], list[int]] = {}
    for r in range(height):
        for c in range(width):
            # after torch.roll(grid, -shift), position (r, c) sits at ((r - s) mod H, ...)
            rr, cc = (r - shift_h) % height, (c - shift_w) % width
            window_of.setdefault((rr // win_h, cc // win_w), []).append(r * width + c)
    for members in window_of.values():
        idx = torch.tensor(members)
        out[:, idx] = plain_attention(q[:, idx], k[:, idx], v[:, idx], heads)
    return out


def gaussian(x: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """A separable Gaussian of taps exp(-k^2 / 2 sigma^2), |k| <= radius, borders mirrored."""
    taps = torch.tensor([math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)])
    taps = taps / taps.sum()
    channels = x.shape[1]
    out = functional.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = functional.conv2d(out, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return functional.conv2d(out, taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
