"""The auto node's schedules: the measured one moves only what the quality lab measured."""

from __future__ import annotations

import dataclasses

import pytest

from hidiff.core.measured import MEASURED_SDXL_RAD, SCHEDULE_NAMES, schedule_for
from hidiff.core.official import official_schedule
from hidiff.core.unet_map import Family


def schedule(name: str, family: Family, side: int, turbo: bool = False, aggressive: bool = True):
    official = official_schedule(family, side, side, turbo=turbo, aggressive=aggressive)
    return schedule_for(name, official, family, turbo=turbo, aggressive=aggressive)


def test_measured_sdxl_runs_rad_at_the_first_downsample_for_the_first_half_without_pooling():
    for side in (256, 384, 512, 1024):
        measured = schedule("measured", Family.SDXL, side)
        assert (measured.key, measured.rad, measured.pool, measured.rad_level) == (
            "sdxl_measured",
            MEASURED_SDXL_RAD,
            None,
            0,
        )
        assert list(measured.rad.steps(20)) == list(range(10))


@pytest.mark.parametrize(
    ("family", "side", "options"),
    [
        (Family.SDXL, 256, {"turbo": True}),
        (Family.SDXL, 256, {"aggressive": False}),
        (Family.SDXL, 512, {"aggressive": False}),
    ],
)
def test_what_the_lab_did_not_measure_keeps_the_official_schedule(family, side, options):
    assert schedule("measured", family, side, **options) == official_schedule(family, side, side, **options)


@pytest.mark.parametrize("side", [128, 256])
def test_measured_sd1x_keeps_the_official_raunet_part_with_native_windows(side):
    """The SD1.5-layout lab model: native windows drew as few or fewer subjects than 2x2, faster."""
    official = official_schedule(Family.SD15, side, side)
    measured = schedule("measured", Family.SD15, side)
    assert measured.window_grid == "native" != official.window_grid
    assert dataclasses.replace(measured, window_grid=official.window_grid) == official


def test_official_gives_the_official_schedule_for_every_family():
    for side in (256, 512):
        assert schedule("official", Family.SDXL, side) == official_schedule(Family.SDXL, side, side)
        assert schedule("official", Family.SD15, side) == official_schedule(Family.SD15, side, side)
    assert schedule("official", Family.SDXL, 256).rad_level == 1


def test_an_unknown_schedule_is_refused_with_the_valid_names():
    assert SCHEDULE_NAMES[0] == "measured"
    names = "measured, official, sd15_1024, sd15_2048, sdxl_2048, sdxl_4096, sdxl_turbo_1024"
    with pytest.raises(ValueError, match=f"schedule must be one of {names}, got 'fast'"):
        schedule("fast", Family.SDXL, 256)


@pytest.mark.parametrize(
    ("family", "key", "side"),
    [(Family.SD15, "sd15_2048", 96), (Family.SD15, "sd15_1024", 256), (Family.SDXL, "sdxl_4096", 128)],
)
def test_a_named_official_schedule_applies_at_any_size(family, key, side):
    """The lab measures the 2048 px schedule on a model whose 4x is 768 px: the key, not the size, decides."""
    assert official_schedule(family, side, side).key != key
    named = schedule(key, family, side)
    at_its_size = {"sd15_2048": 256, "sd15_1024": 128, "sdxl_4096": 512}[key]
    assert named == official_schedule(family, at_its_size, at_its_size)


def test_another_familys_schedule_is_refused_with_this_familys_names():
    with pytest.raises(ValueError, match="'sdxl_4096' is not one of this family's: sd15_1024, sd15_2048"):
        schedule("sdxl_4096", Family.SD15, 256)
