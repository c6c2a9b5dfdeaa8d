"""The official HiDiffusion schedule: which RAU-Net part runs at which steps, per family and size.

Written from the official code (method.md §1.2-1.3). Parts are named by UNet *level* so
that both hosts can place them: ``rad_level`` is the level whose Downsample becomes RAD
(and whose mirrored Upsample becomes RAU), ``pool_level`` the level whose first
block's output is average-pooled (the official "cross-attention block" downscale) and
restored in the mirrored up block.

The official code keeps a counter per patched module and runs a part while
``counter < int(N * ratio)`` (N = steps actually run). Here the same windows are
expressed as fractions of the step count (:class:`StepWindow`), so a host that knows the
step index of a call reproduces the official switching exactly, and a host that thinks in
sampling percent can use the same numbers as ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from .unet_map import Family
from .windows import OFFICIAL_GRID

AGGRESSIVE_STEP = 8 / 50
"""SDXL below 4096 px: RAD for the first 8 of 50 steps, then pooling (``aggressive_step``)."""


@dataclass(frozen=True)
class StepWindow:
    """Active for steps ``int(start * N) <= step < int(end * N)`` of an N-step run."""

    start: float
    end: float

    def steps(self, total: int) -> range:
        """The active step indices of an N-step run, exactly as the official counters."""
        return range(int(self.start * total), int(self.end * total))

    def contains(self, step: int, total: int) -> bool:
        """Whether step ``step`` of an N-step run is active."""
        return step in self.steps(total)


@dataclass(frozen=True)
class FamilyTraits:
    """What only a family can know: where the official method acts and its native size."""

    rad_level: int
    pool_level: int
    native_latent: int
    """Side of the latent the family was trained at (pixels / 8)."""


FAMILY_TRAITS = {
    Family.SD15: FamilyTraits(rad_level=0, pool_level=1, native_latent=64),
    Family.SDXL: FamilyTraits(rad_level=1, pool_level=1, native_latent=128),
}


@dataclass(frozen=True)
class Schedule:
    """The switching for one run: a key (the official ratio table's, or the measured
    schedule's), the step windows of RAD/RAU and of the pooling (None = never), the
    levels they act at (the family's official ones unless a schedule moves them) and
    MSW-MSA's grid of windows (the official 2x2 unless a schedule changes it)."""

    key: str
    rad: StepWindow | None
    pool: StepWindow | None
    rad_level: int
    pool_level: int
    window_grid: str = OFFICIAL_GRID


INPAINTING_IN_CHANNELS = 9
"""Input channels of an inpainting UNet: the latent, the mask and the masked image's latent."""


def aggressive_by_default(in_channels: int, playground: bool = False) -> bool:
    """Whether SDXL below 4096 px runs RAD first when the user has not said.

    The official package switches aggressive mode off when the model's name contains
    "inpainting" or "playground". Adapters see no names, so the structure decides: an
    inpainting UNet has :data:`INPAINTING_IN_CHANNELS` input channels, and a Playground
    v2.5-style model is an EDM model (the adapter tells).
    """
    return in_channels != INPAINTING_IN_CHANNELS and not playground


OFFICIAL_KEYS: dict[Family, tuple[str, ...]] = {
    Family.SD15: ("sd15_1024", "sd15_2048"),
    Family.SDXL: ("sdxl_2048", "sdxl_4096", "sdxl_turbo_1024"),
}
"""The official ratio table's schedules per family, named by the size they were written for."""


def official_key(family: Family, latent_height: int, latent_width: int, *, turbo: bool = False) -> str:
    """The official table's schedule for a latent of this size.

    The official thresholds are absolute sizes (a latent side of 256 for SD1.x/SD2.x, 512
    for SDXL, whatever the model's native size), so they equal four times the default
    native side of SD1.5 and SDXL.
    """
    if family is Family.SD15:
        return "sd15_1024" if latent_height < 256 or latent_width < 256 else "sd15_2048"
    if turbo:
        return "sdxl_turbo_1024"
    return "sdxl_2048" if latent_height < 512 or latent_width < 512 else "sdxl_4096"


def official_by_key(
    family: Family, key: str, *, aggressive: bool = True, text_to_image_controlnet: bool = False
) -> Schedule:
    """The official table's schedule ``key`` (one of ``OFFICIAL_KEYS[family]``), at any size.

    Raises ValueError for a key of another family or none.
    """
    if key not in OFFICIAL_KEYS[family]:
        raise ValueError(f"schedule {key!r} is not one of this family's: {', '.join(OFFICIAL_KEYS[family])}")
    traits = FAMILY_TRAITS[family]

    def schedule(rad: StepWindow | None, pool: StepWindow | None) -> Schedule:
        return Schedule(key, rad, pool, traits.rad_level, traits.pool_level)

    if key == "sd15_1024":
        return schedule(rad=StepWindow(0.0, 0.4), pool=None)
    if key == "sd15_2048":
        return schedule(rad=StepWindow(0.0, 0.7), pool=StepWindow(0.0, 0.3))
    if key == "sdxl_turbo_1024":
        return schedule(rad=None, pool=StepWindow(0.0, 0.5))
    if key == "sdxl_2048":
        t1 = 0.5 if text_to_image_controlnet else 0.4
        if aggressive:
            return schedule(rad=StepWindow(0.0, AGGRESSIVE_STEP), pool=StepWindow(AGGRESSIVE_STEP, t1))
        return schedule(rad=None, pool=StepWindow(0.0, t1))
    return schedule(rad=StepWindow(0.0, 0.3), pool=StepWindow(0.0, 0.7))


def official_schedule(
    family: Family,
    latent_height: int,
    latent_width: int,
    *,
    turbo: bool = False,
    aggressive: bool = True,
    text_to_image_controlnet: bool = False,
) -> Schedule:
    """The official schedule for a latent of ``latent_height`` x ``latent_width``.

    Args:
        family: SD15 (SD1.x / SD2.x) or SDXL.
        turbo: SDXL-Turbo-style few-step model (pooling only, half the steps).
        aggressive: SDXL below 4096 px runs RAD first, then pooling (official default;
            off for inpainting and Playground models).
        text_to_image_controlnet: the official SDXL text-to-image ControlNet variant keeps
            pooling until 50 % instead of 40 %.
    """
    key = official_key(family, latent_height, latent_width, turbo=turbo)
    return official_by_key(family, key, aggressive=aggressive, text_to_image_controlnet=text_to_image_controlnet)
