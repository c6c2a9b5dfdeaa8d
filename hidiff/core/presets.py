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
        return f"in/mid/out blocks [{blocks}], start/end percent {self.start_percent:g}/{self.end_percent:g}"


MSW_MSA_PRESETS: dict[Family, MswMsaPreset] = {
    Family.SD15: MswMsaPreset(input_blocks=(1, 2), middle_blocks=(), output_blocks=(11, 10, 9)),
    Family.SDXL: MswMsaPreset(input_blocks=(4, 5), middle_blocks=(), output_blocks=(3, 4, 5)),
}
