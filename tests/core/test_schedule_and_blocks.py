"""Time ranges, step lookup and block-list parsing (pure functions)."""

from __future__ import annotations

import pytest
import torch

from hidiff.comfyui.blocks import BlockListError, format_block_list, parse_block_list
from hidiff.core.schedule import SigmaRange, TimeRangeError, current_sigma, sigma_range, step_index


def fake_percent_to_sigma(percent: float) -> float:
    """Shaped like ComfyUI's: huge at 0, 0 at 1, decreasing between."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return 14.6 * (1.0 - percent) ** 2


def test_percent_mode_uses_the_models_conversion():
    r = sigma_range("percent", 0.2, 0.6, fake_percent_to_sigma)
    assert r == SigmaRange(fake_percent_to_sigma(0.2), fake_percent_to_sigma(0.6))


def test_timestep_mode_maps_999_to_start():
    r = sigma_range("timestep", 999, 0, fake_percent_to_sigma)
    assert r.contains(14.6) and r.contains(0.03)
    mid = sigma_range("timestep", 999, 499.5, fake_percent_to_sigma)
    assert mid.end == pytest.approx(fake_percent_to_sigma(0.5))


def test_sigma_mode_is_raw():
    assert sigma_range("sigma", 10.0, 1.0, fake_percent_to_sigma) == SigmaRange(10.0, 1.0)


def test_bounds_are_inclusive_with_float_noise():
    r = SigmaRange(5.0, 1.0)
    assert r.contains(5.0) and r.contains(1.0) and r.contains(5.0 * (1 + 1e-7)) and r.contains(1.0 - 1e-7)
    assert not r.contains(5.01) and not r.contains(0.99)


@pytest.mark.parametrize(
    ("mode", "start", "end", "fragment"),
    [
        ("percent", 0.6, 0.2, "start_time = 0.6 comes after end_time = 0.2"),
        ("percent", -0.1, 0.5, "start_time = -0.1 is out of range"),
        ("percent", 0.0, 1.5, "end_time = 1.5 is out of range: in percent mode it must be 0 to 1"),
        ("timestep", 100, 900, "comes after"),
        ("timestep", 1000, 0, "0 to 999"),
        ("sigma", 1.0, 5.0, "comes after"),
        ("sigma", -1.0, 0.0, "at least 0"),
        ("steps", 0.0, 1.0, "time_mode = 'steps' is not valid; use one of percent, timestep, sigma"),
    ],
)
def test_bad_ranges_name_the_input(mode, start, end, fragment):
    with pytest.raises(TimeRangeError, match=fragment.replace("(", r"\(")):
        sigma_range(mode, start, end, fake_percent_to_sigma)


@pytest.mark.parametrize(("mode", "start", "end"), [("percent", 1.0, 0.3), ("timestep", 0, 500), ("sigma", 0.0, 2.0)])
def test_start_at_end_of_sampling_switches_off(mode, start, end):
    r = sigma_range(mode, start, end, fake_percent_to_sigma)
    assert r.disabled
    assert not any(r.contains(s) for s in (0.0, 0.5, 14.0, 1e9))


def test_current_sigma_takes_the_batch_max():
    assert current_sigma(torch.tensor([1.0, 3.0])) == 3.0
    assert current_sigma(None) is None
    assert current_sigma(2.5) == 2.5


def test_step_index_places_calls_on_steps():
    schedule = [10.0, 5.0, 2.0, 1.0, 0.0]
    assert [step_index(s, schedule) for s in (10.0, 5.0, 2.0, 1.0)] == [0, 1, 2, 3]
    assert step_index(7.0, schedule) == 0  # a second-order evaluation inside step 0
    assert step_index(1.5, schedule) == 2
    assert step_index(12.0, schedule) == 0
    assert step_index(3.0, None) == 0
    assert step_index(5.0, torch.tensor(schedule)) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1,2", (1, 2)),
        (" 9, 10 ,11 ", (9, 10, 11)),
        ("", ()),
        ("  ", ()),
        ([4, 5], (4, 5)),
        (3, (3,)),
        ("2,2,1", (2, 1)),
    ],
)
def test_block_lists_parse(value, expected):
    assert parse_block_list("input_blocks", value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1,x", "'x'"),
        ("1,,2", "an empty item"),
        ("-1", "'-1'"),
        ("1.5", "'1.5'"),
        ([1, -2], "-2"),
        (True, "True"),
        ({"a": 1}, "expected"),
    ],
)
def test_bad_block_lists_name_the_input(value, fragment):
    with pytest.raises(BlockListError) as info:
        parse_block_list("output_blocks", value)
    assert "output_blocks" in str(info.value) and fragment in str(info.value)


def test_format_block_list_round_trips():
    assert parse_block_list("x", format_block_list((11, 10, 9))) == (11, 10, 9)
