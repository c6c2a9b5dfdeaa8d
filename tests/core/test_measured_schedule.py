"""The auto node's schedules: the measured one moves only what the quality lab measured."""

from __future__ import annotations

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
        (Family.SD15, 128, {}),
        (Family.SD15, 256, {}),
        (Family.SDXL, 256, {"turbo": True}),
        (Family.SDXL, 256, {"aggressive": False}),
        (Family.SDXL, 512, {"aggressive": False}),
    ],
)
def test_what_the_lab_did_not_measure_keeps_the_official_schedule(family, side, options):
    assert schedule("measured", family, side, **options) == official_schedule(family, side, side, **options)


def test_official_gives_the_official_schedule_for_sdxl():
    for side in (256, 512):
        assert schedule("official", Family.SDXL, side) == official_schedule(Family.SDXL, side, side)
    assert schedule("official", Family.SDXL, 256).rad_level == 1


def test_an_unknown_schedule_is_refused_with_the_valid_names():
    assert SCHEDULE_NAMES[0] == "measured"
    with pytest.raises(ValueError, match="schedule must be one of measured, official, got 'fast'"):
        schedule("fast", Family.SDXL, 256)
