"""The official switching table (method.md §1.3), step by step for N = 50 and N = 10."""

from __future__ import annotations

import pytest

from hidiff.core.official import INPAINTING_IN_CHANNELS, aggressive_by_default, official_schedule
from hidiff.core.plan import level_sizes
from hidiff.core.unet_map import Family


def steps(window, total):
    return (window.steps(total).start, window.steps(total).stop - 1) if window and window.steps(total) else None


@pytest.mark.parametrize(
    ("family", "size", "kwargs", "key", "rad", "pool"),
    [
        (Family.SD15, (128, 128), {}, "sd15_1024", (0, 19), None),
        (Family.SD15, (256, 256), {}, "sd15_2048", (0, 34), (0, 14)),
        (Family.SD15, (256, 128), {}, "sd15_1024", (0, 19), None),
        (Family.SDXL, (256, 256), {}, "sdxl_2048", (0, 7), (8, 19)),
        (Family.SDXL, (256, 256), {"text_to_image_controlnet": True}, "sdxl_2048", (0, 7), (8, 24)),
        (Family.SDXL, (256, 256), {"aggressive": False}, "sdxl_2048", None, (0, 19)),
        (Family.SDXL, (512, 512), {}, "sdxl_4096", (0, 14), (0, 34)),
        (Family.SDXL, (128, 128), {"turbo": True}, "sdxl_turbo_1024", None, (0, 24)),
    ],
)
def test_official_table_for_50_steps(family, size, kwargs, key, rad, pool):
    schedule = official_schedule(family, *size, **kwargs)
    assert schedule.key == key
    assert steps(schedule.rad, 50) == rad
    assert steps(schedule.pool, 50) == pool


def test_ten_step_traces_of_the_method_text():
    sd15 = official_schedule(Family.SD15, 256, 256)
    assert list(sd15.rad.steps(10)) == list(range(7)) and list(sd15.pool.steps(10)) == [0, 1, 2]
    sdxl = official_schedule(Family.SDXL, 256, 256)
    assert list(sdxl.rad.steps(10)) == [0] and list(sdxl.pool.steps(10)) == [1, 2, 3]
    turbo = official_schedule(Family.SDXL, 128, 128, turbo=True)
    assert list(turbo.pool.steps(4)) == [0, 1] and list(turbo.pool.steps(1)) == []
    assert turbo.pool.contains(1, 4) and not turbo.pool.contains(2, 4)


def test_level_sizes_follow_ceil_at_every_step():
    # SD1.5 2048^2 with RAD (level 0) and pool (level 1): mid at 8, the native 512px size
    assert level_sizes(4, (256, 256), rad_level=0, pool_level=1) == ((256, 256), (32, 32), (16, 16), (8, 8))
    # 1000x1496 px: RAD 125x187 -> 32x47 (ceil), exactly as the method text
    assert level_sizes(4, (187, 125), rad_level=0)[1] == (47, 32)
    assert level_sizes(3, (256, 256), pool_level=1) == ((256, 256), (64, 64), (32, 32))


def test_aggressive_mode_is_off_for_inpainting_and_playground_models_by_default():
    """The official package reads "inpainting" / "playground" in the model's name; the
    adapters read the structure: 9 input channels, or an EDM model."""
    assert aggressive_by_default(4) is True
    assert aggressive_by_default(INPAINTING_IN_CHANNELS) is False
    assert aggressive_by_default(4, playground=True) is False
    assert aggressive_by_default(8) is True  # instruct-pix2pix-style 8-channel UNets are not inpainting models
