"""The auto node's schedules: the measured one (its default) and the official one.

The quality lab (:mod:`hidiff.quality`, figures in docs/quality.md) samples models trained
here in the SDXL and SD1.5 layouts above their native side and counts the subjects of
every image (8-16 seeds per cell). On the SDXL-layout model the official SDXL schedule (RAD
at the Downsample leaving level 1 for 16 % of sampling, then pooling after level 1's first
block until 40 %) does not reduce duplication: 81 % at 2x the side, 100 % at 3x and 4x, as
unpatched. RAD at the first Downsample instead (where the official method puts it for
SD1.x, and the seed pack's SDXL "ultra" preset: input 3 / output 5), which runs all of
level 1 at the native size, gave 12 % at 2x, 50 % at 3x and 4x (ApplyRAUNet, 8 seeds).
Adding the pooling to it gave as many or more (62-75 %), ending RAD at 0.3 instead of
0.45-0.6 gave 50 % at 2x. So for SDXL the measured schedule is RAD there for the first half
of sampling and no pooling; through the auto node it gave 6 % at 2x (16 seeds), 25 % at 3x
and 50 % at 4x (8 seeds).

Both measured schedules use MSW-MSA windows no larger than the native token grid
(``window_grid: native``: 3x3 and 4x4 windows at 3x and 4x the side; the official 2x2 up to
2x). On the SDXL-layout model (with the measured RAD) they gave the same duplicates,
subjects and malformed rates as 2x2 at 3x and 4x; on the SD1.5-layout model, whose
full-resolution level is windowed, the same duplicates and as many or fewer subjects per
image (2.50 against 3.12 at 3x, 4.75 both at 4x) in 24 % and 43 % less time per image.
For SD1.x the RAU-Net part stays the official one: no variant tried beat it at 2x, and at
4x the official 2048 px schedule drew fewer subjects (3.62 against 4.75) but as many
duplicates (100 %, as unpatched).

SDXL-Turbo and non-aggressive runs (inpainting, Playground) keep the official schedule,
which the lab has not measured against anything better. ``schedule: official`` in the
advanced YAML gives the official schedule everywhere.

The lab measures composition at scale on a small model, not realism on a real checkpoint.
"""

from __future__ import annotations

from dataclasses import replace

from .official import OFFICIAL_KEYS, Schedule, StepWindow, official_by_key
from .unet_map import Family
from .windows import NATIVE_GRID

SCHEDULE_NAMES = ("measured", "official")
"""The auto node's own schedules; the first is the default."""
SCHEDULE_CHOICES = SCHEDULE_NAMES + tuple(key for keys in OFFICIAL_KEYS.values() for key in keys)
"""The values of the auto node's ``schedule`` option: its own schedules, or one of the official
table's by name (``sd15_2048`` at any size), so the lab can measure a schedule away from its
official size and a user can choose one."""

MEASURED_SDXL_RAD = StepWindow(0.0, 0.5)
"""RAD/RAU at the first Downsample for the first half of sampling (lab, 2x, 8 seeds: 12 %
duplicates ending at 0.45, 0.5 or 0.6, 50 % ending at 0.3)."""
MEASURED_SDXL_RAD_LEVEL = 0
"""The level whose Downsample becomes RAD: the first (SDXL's official level is 1)."""
MEASURED_WINDOW_GRID = NATIVE_GRID
"""MSW-MSA windows no larger than the native token grid, for SDXL and SD1.x (lab, 8 seeds:
as few or fewer subjects than 2x2 at 3x and 4x the side, and faster on SD1.x;
docs/quality.md). At or below twice the native side it is the official 2x2."""


def schedule_for(
    name: str,
    official: Schedule,
    family: Family,
    *,
    turbo: bool,
    aggressive: bool,
    text_to_image_controlnet: bool = False,
) -> Schedule:
    """The ``name`` schedule (one of :data:`SCHEDULE_CHOICES`) in place of ``official``, the
    official schedule for the same family, latent and options.

    ``measured`` changes what the lab measured: for SD1.x the windows, for aggressive
    non-turbo SDXL the RAU-Net part and the windows; every other request gets ``official``
    back. An official table key gives that schedule whatever the size. Raises ValueError for
    an unknown name or another family's key.
    """
    if name not in SCHEDULE_CHOICES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_CHOICES)}, got {name!r}")
    if name not in SCHEDULE_NAMES:
        return official_by_key(family, name, aggressive=aggressive, text_to_image_controlnet=text_to_image_controlnet)
    if name == "official":
        return official
    if family is Family.SD15:
        return replace(official, window_grid=MEASURED_WINDOW_GRID)  # the key names its RAU-Net part
    if turbo or not aggressive:
        return official
    return Schedule(
        "sdxl_measured",
        rad=MEASURED_SDXL_RAD,
        pool=None,
        rad_level=MEASURED_SDXL_RAD_LEVEL,
        pool_level=official.pool_level,
        window_grid=MEASURED_WINDOW_GRID,
    )
