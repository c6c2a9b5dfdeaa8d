"""The auto node's schedules: the measured one (its default) and the official one.

The quality lab (:mod:`hidiff.quality`, figures in docs/quality.md) samples a model trained
here in the SDXL layout above its native side and counts the subjects of every image
(8-16 seeds per cell). On it the official SDXL schedule (RAD at the Downsample leaving
level 1 for 16 % of sampling, then pooling after level 1's first block until 40 %) does
not reduce duplication: 81 % at 2x the side, 100 % at 3x and 4x, as unpatched. RAD at
the first Downsample instead (where the official method puts it for SD1.x, and the seed
pack's SDXL "ultra" preset: input 3 / output 5), which runs all of level 1 at the native
size, gave 12 % at 2x, 50 % at 3x and 4x (ApplyRAUNet, 8 seeds). Adding the pooling to it
gave as many or more (62-75 %), ending RAD at 0.3 instead of 0.45-0.6 gave 50 % at 2x. So
for SDXL the measured schedule is RAD there for the first half of sampling and no pooling;
through the auto node it gave 6 % at 2x (16 seeds), 25 % at 3x and 50 % at 4x (8 seeds).
Its MSW-MSA windows are no larger than the native token grid (``window_grid: native``, 3x3
and 4x4 windows at 3x and 4x once RAD has ended): the same duplicates, subjects and
malformed rates as the official 2x2 at 3x and 4x (8 seeds), with fewer attention FLOPs.
SD1.x, SDXL-Turbo and non-aggressive runs (inpainting, Playground) keep the official
schedule, which the lab has not measured against anything better. ``schedule: official`` in the advanced YAML gives the
official schedule everywhere.

The lab measures composition at scale on a small model, not realism on a real checkpoint.
"""

from __future__ import annotations

from .official import Schedule, StepWindow
from .unet_map import Family
from .windows import NATIVE_GRID

SCHEDULE_NAMES = ("measured", "official")
"""The values of the auto node's ``schedule`` option; the first is the default."""

MEASURED_SDXL_RAD = StepWindow(0.0, 0.5)
"""RAD/RAU at the first Downsample for the first half of sampling (lab, 2x, 8 seeds: 12 %
duplicates ending at 0.45, 0.5 or 0.6, 50 % ending at 0.3)."""
MEASURED_SDXL_RAD_LEVEL = 0
"""The level whose Downsample becomes RAD: the first (SDXL's official level is 1)."""
MEASURED_SDXL_WINDOW_GRID = NATIVE_GRID
"""MSW-MSA windows no larger than the native token grid (lab, 8 seeds, with this RAD: the same
duplicates, subjects and malformed rates as 2x2 at 3x and 4x the side; docs/quality.md).
At or below twice the native side it is the official 2x2."""


def schedule_for(name: str, official: Schedule, family: Family, *, turbo: bool, aggressive: bool) -> Schedule:
    """The ``name`` schedule (one of :data:`SCHEDULE_NAMES`) in place of ``official``, the
    official schedule for the same family, latent and options.

    Only the SDXL schedules the lab measured change; every other request gets ``official``
    back. Raises ValueError for an unknown name.
    """
    if name not in SCHEDULE_NAMES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {name!r}")
    if name == "official" or family is not Family.SDXL or turbo or not aggressive:
        return official
    return Schedule(
        "sdxl_measured",
        rad=MEASURED_SDXL_RAD,
        pool=None,
        rad_level=MEASURED_SDXL_RAD_LEVEL,
        pool_level=official.pool_level,
        window_grid=MEASURED_SDXL_WINDOW_GRID,
    )
