"""MSW-MSA window math against a naive reference that loops over plain softmax attention."""

from __future__ import annotations

import pytest
import torch
from reference import naive_windowed, plain_attention

from hidiff.core.windows import (
    SHIFT_CHOICES,
    SHIFT_MODES,
    native_window_grid,
    partition,
    reverse,
    shift_sequence,
    window_layout,
    windowed_attention,
)

SIZES = [(8, 8), (7, 9), (37, 53), (5, 1), (1, 6), (1, 1), (2, 3), (16, 12)]


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("shift_index", range(SHIFT_CHOICES))
def test_windowed_attention_equals_naive_reference(height, width, shift_index):
    generator = torch.Generator().manual_seed(height * 100 + width + shift_index)
    q, k, v = (torch.randn(2, height * width, 8, generator=generator) for _ in range(3))
    layout = window_layout(height, width, shift_index)
    result = windowed_attention(q, k, v, layout, plain_attention)
    expected = naive_windowed(q, k, v, height, width, shift_index)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


GRIDS = [(3, 3), (4, 2), (1, 3), (5, 7), (4, 4)]


@pytest.mark.parametrize(("height", "width"), [(37, 53), (64, 48), (9, 23), (5, 1)])
@pytest.mark.parametrize(("rows", "cols"), GRIDS)
@pytest.mark.parametrize("shift_index", [0, 3])
def test_any_window_grid_equals_the_naive_reference(height, width, rows, cols, shift_index):
    generator = torch.Generator().manual_seed(height * 31 + width + rows * 7 + cols + shift_index)
    q, k, v = (torch.randn(2, height * width, 8, generator=generator) * 3 for _ in range(3))
    layout = window_layout(height, width, shift_index, rows, cols)
    result = windowed_attention(q, k, v, layout, plain_attention)
    expected = naive_windowed(q, k, v, height, width, shift_index, rows=rows, cols=cols)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    if (rows, cols) != (2, 2) and height * width > 10:
        official = naive_windowed(q, k, v, height, width, shift_index)
        assert (expected - official).abs().max() > 1e-2  # the grid matters: the reference is decisive


@pytest.mark.parametrize(("height", "width", "rows", "cols"), [(37, 53, 3, 4), (64, 48, 4, 4), (130, 70, 5, 3)])
def test_a_window_grid_costs_one_call_per_window_shape(height, width, rows, cols):
    calls = []

    def counting(q, k, v):
        calls.append(tuple(q.shape))
        return plain_attention(q, k, v)

    q = torch.randn(1, height * width, 4)
    layout = window_layout(height, width, 1, rows, cols)
    windowed_attention(q, q, q, layout, counting)
    shapes = {(_len(r), _len(c)) for r, c in layout.window_slices()}
    assert len(calls) == len(shapes) <= 4
    assert sum(shape[0] * shape[1] for shape in calls) == height * width  # (batch x windows) x tokens
    assert sorted(b for b, *_ in calls) == sorted(
        sum(1 for r, c in layout.window_slices() if (_len(r), _len(c)) == shape) for shape in shapes
    )


def _len(s: slice) -> int:
    return s.stop - s.start


def test_native_window_grid_keeps_windows_within_the_native_grid():
    assert native_window_grid(64, 64, 64) == (2, 2)  # at native size: the official 2x2
    assert native_window_grid(128, 128, 64) == (2, 2)  # 2x: each window is the native grid
    assert native_window_grid(256, 256, 64) == (4, 4)  # 4x (SD1.5 at 2048 px): 64x64 windows
    assert native_window_grid(192, 130, 64) == (3, 3)  # 3x and uneven
    assert native_window_grid(97, 300, 32) == (4, 10)
    with pytest.raises(ValueError, match="at least 1 token"):
        native_window_grid(8, 8, 0)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_partition_then_reverse_is_identity(height, width):
    x = torch.randn(3, height * width, 4)
    layout = window_layout(height, width, 3)
    assert torch.equal(reverse(partition(x, layout), layout), x)


def test_even_grid_is_one_batched_call():
    calls = []

    def counting(q, k, v):
        calls.append(q.shape)
        return plain_attention(q, k, v)

    q = torch.randn(2, 64 * 32, 4)
    windowed_attention(q, q, q, window_layout(64, 32, 1), counting)
    assert calls == [torch.Size([8, 32 * 16, 4])]


def test_odd_grid_uses_exact_uneven_windows():
    calls = []

    def counting(q, k, v):
        calls.append(tuple(q.shape))
        return plain_attention(q, k, v)

    q = torch.randn(1, 37 * 53, 4)
    windowed_attention(q, q, q, window_layout(37, 53, 0), counting)
    assert sorted(calls) == sorted([(1, 19 * 27, 4), (1, 19 * 26, 4), (1, 18 * 27, 4), (1, 18 * 26, 4)])


def test_layout_follows_method_formulas():
    layout = window_layout(128, 96, 3)
    assert (layout.window_h, layout.window_w) == (64, 48)
    assert (layout.shift_h, layout.shift_w) == (48, 36)
    odd = window_layout(125, 187, 1)
    assert (odd.window_h, odd.window_w, odd.shift_h, odd.shift_w) == (63, 94, 15, 23)


@pytest.mark.parametrize("bad", [(0, 4, 0), (4, 4, 4), (4, 4, -1), (4, 4, 0, 0, 2)])
def test_layout_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        window_layout(*bad)


def test_partition_rejects_tokens_that_are_not_the_grid():
    with pytest.raises(ValueError, match="do not form"):
        partition(torch.randn(1, 10, 2), window_layout(3, 4))


def test_distinct_shifts_never_repeat_and_cover_all_values():
    sequence = shift_sequence(5, 400, "distinct")
    assert all(a != b for a, b in zip(sequence, sequence[1:]))
    assert set(sequence) == set(range(SHIFT_CHOICES))


def test_independent_shifts_are_the_official_iid_draws():
    """The official code draws each shift uniformly and independently: torch.randint over
    the four positions, here from a generator of its own."""
    sequence = shift_sequence(7, 400, "independent")
    expected = torch.randint(0, SHIFT_CHOICES, (400,), generator=torch.Generator().manual_seed(7)).tolist()
    assert sequence == expected
    assert any(a == b for a, b in zip(sequence, sequence[1:]))  # repeats happen, unlike "distinct"
    assert shift_sequence(7, 50, "none") == [0] * 50


def test_shift_sequences_depend_on_the_seed_only():
    for mode in SHIFT_MODES:
        assert shift_sequence(1, 50, mode) == shift_sequence(1, 50, mode)
        assert shift_sequence(1, 0, mode) == []
    assert shift_sequence(1, 50, "distinct") != shift_sequence(2, 50, "distinct")
    before = torch.get_rng_state()
    shift_sequence(1, 50, "independent")
    assert torch.equal(before, torch.get_rng_state())


def test_an_unknown_shift_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="'sometimes' is not one of distinct, independent, none"):
        shift_sequence(1, 5, "sometimes")
