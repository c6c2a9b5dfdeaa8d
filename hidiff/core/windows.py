"""MSW-MSA: self-attention inside shifted windows, exact at every map size.

HiDiffusion splits the token grid of a high-resolution self-attention layer into a 2x2
grid of windows of ceil(H/2) x ceil(W/2) tokens and attends only inside each window,
cutting the attention cost about 4x. Before splitting, the grid is rolled cyclically by
(window // 4) * k tokens, k in {0, 1, 2, 3}, so window borders move between steps.
Any R x C grid of windows works the same way (windows of ceil(H/R) x ceil(W/C) tokens);
2x2 is the official method and the default.

The official code resamples odd-sized maps to an even size and back, which blurs the
features. Here a side that does not divide simply gives a last window of a different size;
windows of equal shape are batched together (at most four shapes), so the result is exact
at every size.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

SHIFT_CHOICES = 4
"""Number of shift positions, k in {0, 1, 2, 3}; the shift is (window // 4) * k."""

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""Attention over (batch, tokens, channels) q, k, v returning (batch, tokens, channels)."""


@dataclass(frozen=True)
class WindowLayout:
    """Where the windows lie on an H x W token grid, and how far it is rolled.

    Args:
        height: rows of the token grid.
        width: columns of the token grid.
        shift_h: cyclic roll applied to the rows before splitting.
        shift_w: cyclic roll applied to the columns before splitting.
        rows: windows down the grid (2 in the official method).
        cols: windows across the grid (2 in the official method).
    """

    height: int
    width: int
    shift_h: int = 0
    shift_w: int = 0
    rows: int = 2
    cols: int = 2

    @property
    def window_h(self) -> int:
        """Rows of every window but the last of a column: ceil(H / rows)."""
        return -(-self.height // self.rows)

    @property
    def window_w(self) -> int:
        """Columns of every window but the last of a row: ceil(W / cols)."""
        return -(-self.width // self.cols)

    def window_slices(self) -> list[tuple[slice, slice]]:
        """Row and column slices of the windows, in row-major window order (a side that
        ceil-divides into fewer pieces than asked gives fewer windows, none empty)."""
        rows = _pieces(self.height, self.window_h)
        cols = _pieces(self.width, self.window_w)
        return [(r, c) for r in rows for c in cols]


def _pieces(size: int, piece: int) -> list[slice]:
    return [slice(start, min(start + piece, size)) for start in range(0, size, piece)]


def _length(s: slice) -> int:
    return s.stop - s.start


def window_layout(height: int, width: int, shift_index: int = 0, rows: int = 2, cols: int = 2) -> WindowLayout:
    """The layout for a grid of ``rows`` x ``cols`` windows with shift k = ``shift_index``:
    (window // 4) * k per side."""
    if height < 1 or width < 1:
        raise ValueError(f"token grid must be at least 1x1, got {height}x{width}")
    if not 0 <= shift_index < SHIFT_CHOICES:
        raise ValueError(f"shift_index must be in 0..{SHIFT_CHOICES - 1}, got {shift_index}")
    if rows < 1 or cols < 1:
        raise ValueError(f"a window grid needs at least 1x1 windows, got {rows}x{cols}")
    base = WindowLayout(height, width, rows=rows, cols=cols)
    return WindowLayout(
        height,
        width,
        (base.window_h // 4) * shift_index,
        (base.window_w // 4) * shift_index,
        rows,
        cols,
    )


OFFICIAL_GRID = "2x2"
"""The official method's grid of windows, the default."""
NATIVE_GRID = "native"
"""Windows no larger than the native token grid (:func:`native_window_grid`)."""
_GRID_TEXT = re.compile(r"(\d{1,2})\s*x\s*(\d{1,2})")


def parse_window_grid(value: object) -> str:
    """A ``window_grid`` setting, checked and normalised: ``2x2``, ``native`` or ``RxC``
    (1 to 64 windows a side, not 1x1). Raises ValueError naming the setting."""
    text = value.strip().lower() if isinstance(value, str) else ""
    if text == NATIVE_GRID:
        return text
    match = _GRID_TEXT.fullmatch(text)
    rows, cols = (int(match[1]), int(match[2])) if match else (0, 0)
    if not (1 <= rows <= 64 and 1 <= cols <= 64) or (rows, cols) == (1, 1):
        raise ValueError(
            f"window_grid must be {OFFICIAL_GRID} (the official method), {NATIVE_GRID}, or RxC windows such as "
            f"4x4 (1 to 64 a side, not 1x1), got {value!r}"
        )
    return f"{rows}x{cols}"


def grid_of_windows(window_grid: str, height: int, width: int, native_side: int | None = None) -> tuple[int, int]:
    """Rows and columns of windows of a checked ``window_grid`` on a ``height`` x ``width``
    token grid; ``native`` needs the side of the native token grid where the layer runs."""
    if window_grid == NATIVE_GRID:
        if native_side is None:
            raise ValueError("window_grid native needs the native token grid of the layer")
        return native_window_grid(height, width, native_side)
    rows, cols = window_grid.split("x")
    return int(rows), int(cols)


def native_window_grid(height: int, width: int, native_side: int) -> tuple[int, int]:
    """Rows and columns of windows no larger than the native token grid: ceil(side /
    native side) per side, at least 2x2 (never fewer windows than the official method)."""
    if native_side < 1:
        raise ValueError(f"the native token grid must be at least 1 token wide, got {native_side}")
    return max(2, -(-height // native_side)), max(2, -(-width // native_side))


@functools.lru_cache(maxsize=64)
def _token_order(layout: WindowLayout) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Token indices in window order (window by window, row-major inside each), their
    inverse permutation, and the token count of each window.

    Partitioning becomes one gather and reversing another, whatever the shift and sizes.
    """
    grid = torch.arange(layout.height * layout.width).view(layout.height, layout.width)
    if layout.shift_h or layout.shift_w:
        grid = torch.roll(grid, shifts=(-layout.shift_h, -layout.shift_w), dims=(0, 1))
    parts = [grid[rows, cols].reshape(-1) for rows, cols in layout.window_slices()]
    order = torch.cat(parts)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    return order, inverse, tuple(p.numel() for p in parts)


@functools.lru_cache(maxsize=64)
def _token_order_on(layout: WindowLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """:func:`_token_order` on ``device``, so a GPU call copies no index tensor."""
    order, inverse, sizes = _token_order(layout)
    return order.to(device), inverse.to(device), sizes


def partition(x: torch.Tensor, layout: WindowLayout) -> list[tuple[list[int], torch.Tensor]]:
    """Split (B, H*W, C) tokens into windows, batching windows of equal shape.

    Returns a list of (window ids, tensor) groups; each tensor is
    (B * len(window ids), tokens per window, C), batch-major. On an even grid this is a
    single group made by one gather and a free view.
    """
    batch, tokens, channels = x.shape
    if tokens != layout.height * layout.width:
        raise ValueError(f"{tokens} tokens do not form a {layout.height}x{layout.width} grid")
    order, _, sizes = _token_order_on(layout, x.device)
    windowed = x[:, order]
    if len(set(sizes)) == 1:
        return [(list(range(len(sizes))), windowed.view(batch * len(sizes), sizes[0], channels))]
    chunks = torch.split(windowed, sizes, dim=1)
    groups: dict[tuple[int, int], list[int]] = {}
    for window_id, (rows, cols) in enumerate(layout.window_slices()):
        groups.setdefault((_length(rows), _length(cols)), []).append(window_id)
    return [
        (ids, torch.stack([chunks[i] for i in ids], dim=1).view(batch * len(ids), sizes[ids[0]], channels))
        for ids in groups.values()
    ]


def reverse(groups: list[tuple[list[int], torch.Tensor]], layout: WindowLayout) -> torch.Tensor:
    """Inverse of :func:`partition`: put windows back and undo the roll, (B, H*W, C)."""
    first_ids, first = groups[0]
    _, inverse, sizes = _token_order_on(layout, first.device)
    batch, channels = first.shape[0] // len(first_ids), first.shape[-1]
    if len(groups) == 1:
        windowed = first.reshape(batch, -1, channels)
    else:
        chunks: dict[int, torch.Tensor] = {}
        for ids, tensor in groups:
            per_window = tensor.view(batch, len(ids), -1, channels)
            chunks.update({window_id: per_window[:, n] for n, window_id in enumerate(ids)})
        windowed = torch.cat([chunks[i] for i in range(len(sizes))], dim=1)
    return windowed[:, inverse]


def windowed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: WindowLayout,
    attention: AttentionFn,
) -> torch.Tensor:
    """Self-attention restricted to the windows of ``layout``.

    q, k and v are (B, H*W, C) projections of the same token grid. Each group of
    equally shaped windows is one call of ``attention``, so an even grid costs a single
    call over a 4x larger batch of 4x shorter sequences.
    """
    q_groups = partition(q, layout)
    k_groups = partition(k, layout)
    v_groups = partition(v, layout)
    out = [
        (ids, attention(qg, kg, vg)) for (ids, qg), (_, kg), (_, vg) in zip(q_groups, k_groups, v_groups, strict=True)
    ]
    return reverse(out, layout)


SHIFT_MODES = ("distinct", "independent", "none")
"""How the window shifts follow each other over the steps: ``distinct`` (the seed pack's: a
new shift every step, ComfyUI's default), ``independent`` (the official i.i.d. draws, the
diffusers adapter's) or ``none`` (windows never move)."""


def shift_sequence(seed: int, length: int, mode: str) -> list[int]:
    """``length`` MSW-MSA shift indices (k in 0..3) drawn from a private CPU generator
    seeded with ``seed``, so the same seed gives the same windows and the global RNG is
    never touched. Both adapters draw here; what the seed mixes in (the sampling seed and
    the block in ComfyUI, ``window_seed`` and the step in diffusers) is theirs.
    """
    if mode not in SHIFT_MODES:
        raise ValueError(f"shift mode {mode!r} is not one of {', '.join(SHIFT_MODES)}")
    if length <= 0:
        return []
    if mode == "none":
        return [0] * length
    draws = torch.randint(0, SHIFT_CHOICES, (length,), generator=torch.Generator(device="cpu").manual_seed(seed))
    return _distinct(draws.tolist()) if mode == "distinct" else draws.tolist()


def _distinct(draws: list[int]) -> list[int]:
    """Uniform draws over the shifts made into a sequence with no two consecutive entries
    equal: the first is uniform over all shifts, each later one uniform over the three
    that differ from its predecessor (so the windows always move between steps)."""
    shifts = [draws[0]]
    for draw in draws[1:]:
        step = 1 + draw % (SHIFT_CHOICES - 1)
        shifts.append((shifts[-1] + step) % SHIFT_CHOICES)
    return shifts
