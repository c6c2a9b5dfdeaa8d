"""Settings that only a model family can know: the seed pack's presets.

Block numbers are kept exactly as the seed pack shipped them so that a saved Simple-node
workflow samples the same blocks and times; block pairs themselves are derived from the
model (see :mod:`hidiff.core.unet_map`), and the Simple nodes check each preset against
the loaded model before using it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .unet_map import Family


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

    def describe(self) -> str:
        """The seed's log format: ``in/mid/out blocks [1,2 /  / 11,10,9], start/end percent 0.2/1.0``."""
        blocks = " / ".join(",".join(map(str, b)) for b in (self.input_blocks, self.middle_blocks, self.output_blocks))
        return f"in/mid/out blocks [{blocks}], start/end percent {self.start_percent:.2}/{self.end_percent:.2}"


MSW_MSA_PRESETS: dict[Family, MswMsaPreset] = {
    Family.SD15: MswMsaPreset(input_blocks=(1, 2), middle_blocks=(), output_blocks=(11, 10, 9)),
    Family.SDXL: MswMsaPreset(input_blocks=(4, 5), middle_blocks=(), output_blocks=(3, 4, 5)),
}


RAUNET_RES_MODES = ("high (1536-2048)", "low (1024 or lower)", "ultra (over 2048)")
"""``ApplyRAUNetSimple``'s res_mode options, in the seed's order; the first word is the key."""


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
