"""The automatic plan: what HiDiffusion should do for this model at this size.

Combines the model's structure (:mod:`hidiff.core.unet_map`), the family's native size
and a schedule (:mod:`hidiff.core.measured`, :mod:`hidiff.core.official`) into blocks and
sampling-percent ranges for both effects, and the native-resolution gate: at or below the
size a model was trained at, RAU-Net only harms quality and MSW-MSA gains nothing, so the
plan is empty. A hires-fix second pass is gated too: its early, high-noise steps, where RAU-Net
acts, are simply not part of a low-denoise run, because the ranges are sampling percent
of the model's own noise schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cost import BlockCost, estimate_flops
from .gate import at_or_below_native
from .measured import SCHEDULE_NAMES, schedule_for
from .official import FAMILY_TRAITS, Schedule, StepWindow, official_schedule
from .schedule import TimeMode
from .settings import MswMsaSettings, RauNetSettings
from .unet_map import FAMILY_NAMES, Family, UNetMap
from .windows import OFFICIAL_GRID

OFF = (1.0, 1.0)
"""A percent range that switches a part off (a start at the end of sampling)."""


@dataclass(frozen=True)
class Phase:
    """Feature-map size (height, width) of every level during one phase of sampling."""

    label: str
    sizes: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class AutoPlan:
    """Everything the auto node does: blocks, phases, and the settings of both effects."""

    family: Family
    latent: tuple[int, int]
    native_latent: int
    active: bool
    reason: str
    schedule: Schedule | None = None
    rad_pair: tuple[int, int] | None = None
    pool_pair: tuple[int, int] | None = None
    msw_input_blocks: tuple[int, ...] = ()
    msw_output_blocks: tuple[int, ...] = ()
    phases: tuple[Phase, ...] = field(default=())
    _unet: UNetMap | None = field(default=None, repr=False, compare=False)

    def raunet_settings(self, verbose: bool = False) -> RauNetSettings:
        """RAU-Net settings that do the plan (official operators: nearest RAU, avg_pool2d 2 with
        ceil and bicubic restore); a part the plan does not use is off (start at the end)."""
        rad = _percent(self.schedule.rad if self.schedule and self.rad_pair else None)
        pool = _percent(self.schedule.pool if self.schedule and self.pool_pair else None)
        rad_in, rad_out = self.rad_pair or ((), ())
        pool_in, pool_out = self.pool_pair or ((), ())
        return RauNetSettings(
            input_blocks=_blocks(rad_in),
            output_blocks=_blocks(rad_out),
            time_mode=TimeMode.PERCENT.value,
            start_time=float(rad[0]),
            end_time=float(rad[1]),
            upscale_mode="nearest",
            ca_start_time=float(pool[0]),
            ca_end_time=float(pool[1]),
            ca_input_blocks=_blocks(pool_in),
            ca_output_blocks=_blocks(pool_out),
            ca_upscale_mode="bicubic",
            ca_downscale_mode="avg_pool2d",
            ca_downscale_factor=2.0,
            verbose=verbose,
        )

    def msw_settings(self, verbose: bool = False) -> MswMsaSettings:
        """MSW-MSA settings that do the plan: every step, the schedule's window grid, sized by
        the plan's native size (the user's, else the model's)."""
        return MswMsaSettings(
            input_blocks=self.msw_input_blocks,
            middle_blocks=(),
            output_blocks=self.msw_output_blocks,
            time_mode=TimeMode.PERCENT.value,
            start_time=0.0,
            end_time=1.0,
            verbose=verbose,
            window_grid=self.schedule.window_grid if self.schedule else OFFICIAL_GRID,
            native_resolution=self.native_latent * 8,
        )

    def flop_lines(self, costs: dict[tuple[str, int], BlockCost]) -> list[str]:
        """Estimated FLOPs of one call in each phase, against the unpatched call."""
        normal = next(p for p in self.phases if p.label == "normal")
        unet_blocks = self._unet
        base = estimate_flops(unet_blocks, costs, normal.sizes)
        windowed = frozenset(("input", b) for b in self.msw_input_blocks) | frozenset(
            ("output", b) for b in self.msw_output_blocks
        )
        lines = []
        for phase in self.phases:
            flops = estimate_flops(unet_blocks, costs, phase.sizes, windowed)
            lines.append(
                f"  estimated FLOPs per call ({phase.label}, with MSW-MSA): {flops / 1e9:.0f} GFLOP, "
                f"{base / flops:.2f}x fewer than unpatched ({base / 1e9:.0f} GFLOP)"
            )
        return lines

    def describe(self, costs: dict[tuple[str, int], BlockCost] | None = None) -> str:
        """A multi-line report for the log and the Inspect node (FLOP estimates with ``costs``)."""
        height, width = self.latent
        head = (
            f"{FAMILY_NAMES[self.family]} model, native {self.native_latent * 8}px, "
            f"target {width * 8}x{height * 8}px (width x height; latent {width}x{height})"
        )
        if not self.active:
            return f"{head}: {self.reason}"
        raunet, msw = self.raunet_settings(), self.msw_settings()
        lines = [f"{head}: schedule {self.schedule.key}"]
        if self.rad_pair:
            lines.append(
                f"  RAD/RAU: input {_text(raunet.input_blocks)} -> output {_text(raunet.output_blocks)}, "
                f"percent {raunet.start_time:g}-{raunet.end_time:g}"
            )
        if self.pool_pair:
            lines.append(
                f"  CA pool: input {_text(raunet.ca_input_blocks)} -> output {_text(raunet.ca_output_blocks)}, "
                f"percent {raunet.ca_start_time:g}-{raunet.ca_end_time:g}"
            )
        lines.append(
            f"  MSW-MSA: input {_text(msw.input_blocks)} / output {_text(msw.output_blocks)}, every step, "
            f"window_grid {msw.window_grid}"
        )
        lines.append(
            f"  any call at or below the native {self.native_latent * 8}px runs unpatched (native gate, per call)"
        )
        for phase in self.phases:
            sizes = ", ".join(f"L{level} {w}x{h}" for level, (h, w) in enumerate(phase.sizes))
            lines.append(f"  feature maps, width x height ({phase.label}): {sizes}")
        if costs is not None and self._unet is not None:
            lines.extend(self.flop_lines(costs))
        return "\n".join(lines)


def _percent(window: StepWindow | None) -> tuple[float, float]:
    return OFF if window is None else (window.start, window.end)


def _blocks(blocks: int | tuple[int, ...]) -> tuple[int, ...]:
    return (blocks,) if isinstance(blocks, int) else blocks


def _text(blocks: tuple[int, ...]) -> str:
    """Blocks as the report writes them: ``4,5``."""
    return ",".join(map(str, blocks))


def _ceil_div(size: int, factor: int) -> int:
    return -(-size // factor)


def level_sizes(
    levels: int, latent: tuple[int, int], rad_level: int | None = None, pool_level: int | None = None
) -> tuple[tuple[int, int], ...]:
    """Main feature-map size of every level: RAD divides by 4 on leaving ``rad_level``,
    the pool halves ``pool_level`` after its first block; every step rounds up."""
    size, sizes = latent, []
    for level in range(levels):
        if level > 0:
            factor = 4 if level - 1 == rad_level else 2
            size = (_ceil_div(size[0], factor), _ceil_div(size[1], factor))
        if level == pool_level:
            size = (_ceil_div(size[0], 2), _ceil_div(size[1], 2))
        sizes.append(size)
    return tuple(sizes)


def phases(
    unet: UNetMap, latent: tuple[int, int], schedule: Schedule, rad_level: int | None, pool_level: int | None
) -> tuple[Phase, ...]:
    """The sizes of each phase the schedule has: RAD and pool together, alone, and normal."""
    result = []
    rad, pool = (schedule.rad if rad_level is not None else None), (schedule.pool if pool_level is not None else None)
    if rad and pool and max(rad.start, pool.start) < min(rad.end, pool.end):
        result.append(Phase("RAD + pool", level_sizes(unet.levels, latent, rad_level, pool_level)))
    if rad:
        result.append(Phase("RAD", level_sizes(unet.levels, latent, rad_level=rad_level)))
    if pool:
        result.append(Phase("pool", level_sizes(unet.levels, latent, pool_level=pool_level)))
    result.append(Phase("normal", level_sizes(unet.levels, latent)))
    return tuple(result)


def plan_for(
    unet: UNetMap,
    latent_height: int,
    latent_width: int,
    *,
    native_latent: int | None = None,
    turbo: bool = False,
    aggressive: bool = True,
    text_to_image_controlnet: bool = False,
    schedule_name: str = SCHEDULE_NAMES[0],
) -> AutoPlan:
    """The plan for a latent of ``latent_height`` x ``latent_width`` on this UNet, with
    the ``schedule_name`` schedule (:data:`~hidiff.core.measured.SCHEDULE_CHOICES`).

    Raises ValueError for a model that is not an SD1.x/SD2.x/SDXL-like UNet.
    """
    if not unet.supported or unet.family is None:
        supported = ", ".join(FAMILY_NAMES.values())
        raise ValueError(f"HiDiffusion applies to {supported} UNets; this model is {unet.describe()}")
    family = unet.family
    traits = FAMILY_TRAITS[family]
    native = native_latent or traits.native_latent
    latent = (latent_height, latent_width)
    if at_or_below_native(latent_height, latent_width, native):
        return AutoPlan(
            family,
            latent,
            native,
            False,
            f"at or below the native {native * 8}px, HiDiffusion would only harm quality; nothing is patched",
        )
    official = official_schedule(
        family,
        latent_height,
        latent_width,
        turbo=turbo,
        aggressive=aggressive,
        text_to_image_controlnet=text_to_image_controlnet,
    )
    schedule = schedule_for(
        schedule_name,
        official,
        family,
        turbo=turbo,
        aggressive=aggressive,
        text_to_image_controlnet=text_to_image_controlnet,
    )
    rad_in = unet.downsample_leaving(schedule.rad_level) if schedule.rad else None
    pool_in = unet.first_block_at(schedule.pool_level) if schedule.pool else None
    rad_pair = (rad_in, unet.downsample_pairs()[rad_in]) if rad_in is not None else None
    pool_pair = (pool_in, unet.pool_pairs()[pool_in]) if pool_in is not None else None
    attention_level = unet.highest_attention_level()
    return AutoPlan(
        family,
        latent,
        native,
        True,
        "above the native size",
        schedule,
        rad_pair,
        pool_pair,
        unet.attention_blocks_at("input", attention_level),
        unet.attention_blocks_at("output", attention_level),
        phases(
            unet,
            latent,
            schedule,
            schedule.rad_level if rad_pair else None,
            schedule.pool_level if pool_pair else None,
        ),
        unet,
    )
