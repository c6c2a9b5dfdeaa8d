"""Settings that only a model family can know: the seed pack's presets.

Block numbers are kept exactly as the seed pack shipped them so that a saved Simple-node
workflow samples the same blocks and times; block pairs themselves are derived from the
model (see :mod:`hidiff.core.unet_map`), and the Simple nodes check each preset against
the loaded model before using it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .unet_map import Family, UNetMap


@dataclass(frozen=True)
class MswMsaPreset:
    """Blocks and percent range for ``ApplyMSWMSAAttentionSimple``."""

    input_blocks: tuple[int, ...]
    middle_blocks: tuple[int, ...]
    output_blocks: tuple[int, ...]
    start_percent: float = 0.2
    end_percent: float = 1.0

    def edited(self, **changes: object) -> MswMsaPreset:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def settings(self) -> dict[str, object]:
        """The settings of the advanced MSW-MSA that do the same (percent times)."""
        return {
            "input_blocks": self.input_blocks,
            "middle_blocks": self.middle_blocks,
            "output_blocks": self.output_blocks,
            "time_mode": "percent",
            "start_time": self.start_percent,
            "end_time": self.end_percent,
        }

    def describe(self) -> str:
        """The seed's log format: ``in/mid/out blocks [1,2 /  / 11,10,9], start/end percent 0.2/1.0``."""
        blocks = " / ".join(",".join(map(str, b)) for b in (self.input_blocks, self.middle_blocks, self.output_blocks))
        return f"in/mid/out blocks [{blocks}], start/end percent {self.start_percent:.2}/{self.end_percent:.2}"


MSW_MSA_PRESETS: dict[Family, MswMsaPreset] = {
    Family.SD15: MswMsaPreset(input_blocks=(1, 2), middle_blocks=(), output_blocks=(11, 10, 9)),
    Family.SDXL: MswMsaPreset(input_blocks=(4, 5), middle_blocks=(), output_blocks=(3, 4, 5)),
}


RAUNET_STRENGTHS = ("high", "low", "ultra")
"""The Simple RAU-Net presets of each family, in the seed's order."""


@dataclass(frozen=True)
class RauNetPreset:
    """Blocks and percent ranges for ``ApplyRAUNetSimple``; start 1.0 = that part is off."""

    input_blocks: tuple[int, ...]
    output_blocks: tuple[int, ...]
    ca_input_blocks: tuple[int, ...]
    ca_output_blocks: tuple[int, ...]
    start_percent: float = 1.0
    end_percent: float = 1.0
    ca_start_percent: float = 1.0
    ca_end_percent: float = 1.0
    upscale_mode: str = "bicubic"
    ca_upscale_mode: str = "bicubic"
    ca_downscale_mode: str = "avg_pool2d"
    ca_downscale_factor: float = 2.0

    def edited(self, **changes: object) -> RauNetPreset:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def settings(self) -> dict[str, object]:
        """The settings of the advanced RAU-Net that do the same (percent times)."""
        return {
            "input_blocks": self.input_blocks,
            "output_blocks": self.output_blocks,
            "time_mode": "percent",
            "start_time": self.start_percent,
            "end_time": self.end_percent,
            "upscale_mode": self.upscale_mode,
            "ca_start_time": self.ca_start_percent,
            "ca_end_time": self.ca_end_percent,
            "ca_input_blocks": self.ca_input_blocks,
            "ca_output_blocks": self.ca_output_blocks,
            "ca_upscale_mode": self.ca_upscale_mode,
            "ca_downscale_mode": self.ca_downscale_mode,
            "ca_downscale_factor": self.ca_downscale_factor,
        }

    def describe(self) -> str:
        """The seed's log format: ``upscale bicubic, in/out blocks [3 / 8], start/end percent 0.0/0.5  |  CA ...``."""

        def blocks(inputs: tuple[int, ...], outputs: tuple[int, ...]) -> str:
            return " / ".join(",".join(map(str, b)) or "none" for b in (inputs, outputs))

        return (
            f"upscale {self.upscale_mode}, in/out blocks [{blocks(self.input_blocks, self.output_blocks)}], "
            f"start/end percent {self.start_percent:.2}/{self.end_percent:.2}  |  "
            f"CA upscale {self.ca_upscale_mode}, CA in/out blocks [{blocks(self.ca_input_blocks, self.ca_output_blocks)}], "
            f"CA start/end percent {self.ca_start_percent:.2}/{self.ca_end_percent:.2}"
        )


_SD15_RAUNET = RauNetPreset(input_blocks=(3,), output_blocks=(8,), ca_input_blocks=(1,), ca_output_blocks=(11,))
_SDXL_RAUNET = RauNetPreset(input_blocks=(3,), output_blocks=(5,), ca_input_blocks=(4,), ca_output_blocks=(5,))

RAUNET_PRESETS: dict[tuple[Family, str], RauNetPreset] = {
    (Family.SD15, "low"): _SD15_RAUNET.edited(start_percent=0.0, end_percent=0.4),
    (Family.SD15, "high"): _SD15_RAUNET.edited(
        start_percent=0.0, end_percent=0.5, ca_start_percent=0.0, ca_end_percent=0.35
    ),
    (Family.SD15, "ultra"): _SD15_RAUNET.edited(
        start_percent=0.0, end_percent=0.6, ca_start_percent=0.0, ca_end_percent=0.45
    ),
    (Family.SDXL, "low"): _SDXL_RAUNET,
    (Family.SDXL, "high"): _SDXL_RAUNET.edited(ca_start_percent=0.0, ca_end_percent=0.5),
    (Family.SDXL, "ultra"): _SDXL_RAUNET.edited(
        start_percent=0.0, end_percent=0.45, ca_start_percent=0.0, ca_end_percent=0.6
    ),
}
"""The seed pack's ``SIMPLE_PRESETS``, value for value, keyed by (family, first word of res_mode)."""


# --- placing the presets on the loaded model -------------------------------------------------

MSW_MSA_LEVEL = {Family.SD15: 0, Family.SDXL: 1}
"""The level whose self-attention the presets window: the finest level with attention."""

RAUNET_SIMPLE_LEVELS = {Family.SD15: (0, 0), Family.SDXL: (0, 1)}
"""(RAD level, CA level) of the seed's Simple presets: SD1.x RAD 3/8 and CA 1/11 sit at
level 0; SDXL RAD 3/5 at level 0 and CA 4/5 at level 1."""


class PresetPlacementError(ValueError):
    """The model lacks a block a preset needs."""


def _keep_or_place(preset_blocks: tuple[int, ...], placed: tuple[int, ...]) -> tuple[int, ...]:
    """The preset's own numbers (and order) when they are the blocks the structure gives,
    else the blocks the structure gives for this layout."""
    return preset_blocks if set(preset_blocks) == set(placed) else placed


def msw_msa_preset_for(family: Family, unet: UNetMap) -> MswMsaPreset:
    """The MSW-MSA Simple preset on this model's own blocks (same numbers on the standard layouts)."""
    preset = MSW_MSA_PRESETS[family]
    level = MSW_MSA_LEVEL[family]
    inputs, outputs = unet.attention_blocks_at("input", level), unet.attention_blocks_at("output", level)
    if not inputs and not outputs:
        raise PresetPlacementError(f"this {unet.describe()} has no self-attention at level {level}")
    return preset.edited(
        input_blocks=_keep_or_place(preset.input_blocks, inputs),
        output_blocks=_keep_or_place(preset.output_blocks, outputs),
    )


def raunet_preset_for(family: Family, res: str, unet: UNetMap) -> RauNetPreset:
    """The RAU-Net Simple preset on this model's own blocks (same numbers on the standard layouts)."""
    preset = RAUNET_PRESETS[(family, res)]
    rad_level, ca_level = RAUNET_SIMPLE_LEVELS[family]
    rad_in, ca_in = unet.downsample_leaving(rad_level), unet.first_block_at(ca_level)
    rad_out = unet.downsample_pairs().get(rad_in) if rad_in is not None else None
    ca_out = unet.pool_pairs().get(ca_in) if ca_in is not None else None
    if rad_out is None or ca_out is None:
        raise PresetPlacementError(
            f"this {unet.describe()} has no RAD or CA block pair at levels {rad_level}/{ca_level}"
        )
    return preset.edited(
        input_blocks=_keep_or_place(preset.input_blocks, (rad_in,)),
        output_blocks=_keep_or_place(preset.output_blocks, (rad_out,)),
        ca_input_blocks=_keep_or_place(preset.ca_input_blocks, (ca_in,)),
        ca_output_blocks=_keep_or_place(preset.ca_output_blocks, (ca_out,)),
    )
