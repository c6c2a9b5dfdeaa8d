"""MSW-MSA's parameters, each declared once, and the checked settings they make.

:data:`PARAMETERS` is the one source of ``ApplyMSWMSAAttention``'s widgets (in the seed
pack's order), its defaults, its YAML keys and their checks; :func:`build_settings` turns
node inputs and ``yaml_parameters`` into :class:`MswMsaSettings`. Blocks without
self-attention need the model and are reported by :func:`hidiff.comfyui.msw_msa.apply_msw_msa`.
"""

from __future__ import annotations

from typing import Any

from ..core.schedule import sigma_range
from ..core.settings import MswMsaSettings
from ..core.windows import OFFICIAL_GRID, SHIFT_MODES, parse_window_grid
from .node_common import time_mode_parameter
from .params import ParameterSet, blocks, choice, number, require_bool, require_native_resolution, yaml_only

PARAMETERS = ParameterSet(
    (
        blocks(
            "input_blocks",
            "1,2",
            "input blocks to window, e.g. '1,2' or [1, 2]",
            "Comma list of input blocks to window. SD1.x/SD2.x attention blocks: 1,2,4,5,7,8; SDXL: 4,5,7,8. "
            "Lower numbers = higher resolution = bigger speed-up.",
        ),
        blocks(
            "middle_blocks",
            "",
            "middle blocks to window ('0' or empty)",
            "Middle block (0) to window, or empty. HiDiffusion never windows it.",
        ),
        blocks(
            "output_blocks",
            "9,10,11",
            "output blocks to window, e.g. '9,10,11'",
            "Comma list of output blocks to window. SD1.x/SD2.x attention blocks: 3-11; SDXL: 0-5.",
        ),
        time_mode_parameter(),
        number(
            "start_time",
            0.0,
            "when windowing starts (inclusive)",
            "When windowing starts (inclusive), in time_mode units.",
        ),
        number(
            "end_time", 1.0, "when windowing ends (inclusive)", "When windowing ends (inclusive), in time_mode units."
        ),
        choice(
            "shift_mode",
            "distinct",
            lambda: SHIFT_MODES,
            "distinct (default: the windows move every step), independent (official i.i.d. shifts) or none",
        ),
        yaml_only(
            "window_grid",
            OFFICIAL_GRID,
            lambda name, value: parse_window_grid(value),
            "2x2 (the official method, default), native (windows no larger than the model's native "
            "token grid: more windows above twice the native side) or RxC windows, e.g. 4x4",
        ),
        yaml_only(
            "native_resolution",
            None,
            lambda name, value: require_native_resolution(value),
            "the model's native size in pixels, for window_grid: native "
            "(default: from the model: SD1.x 512, SD2.x-v 768, SDXL 1024)",
        ),
        yaml_only("verbose", False, require_bool, "true to log the window layout of each block once per run"),
    )
)


def build_settings(yaml_parameters: str | None = None, **inputs: Any) -> MswMsaSettings:
    """Merge node inputs, defaults and ``yaml_parameters``; check every value.

    Raises :class:`~hidiff.comfyui.params.ParameterError` (or another ValueError) naming
    the input. Time bounds and their order are checked here already; the model's own
    sigma scale is applied later, by :func:`~hidiff.comfyui.msw_msa.apply_msw_msa`.
    """
    return PARAMETERS.build(yaml_parameters, inputs, _checked_settings)


def _checked_settings(values: dict[str, Any]) -> MswMsaSettings:
    settings = MswMsaSettings(**values)
    # Any decreasing map keeps the order of percents, so bounds and order are checked without a model.
    sigma_range(settings.time_mode, settings.start_time, settings.end_time, lambda p: 1.0 - p)
    return settings
