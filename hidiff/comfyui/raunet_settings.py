"""RAU-Net's parameters, each declared once, and the checked settings they make.

:data:`PARAMETERS` is the one source of ``ApplyRAUNet``'s widgets (their order is the seed
pack's, so saved workflows load unchanged), its defaults, its YAML keys and their checks.
:func:`build_settings` turns node inputs and ``yaml_parameters`` into :class:`RauNetSettings`;
the block pairs need the model and are checked by :func:`hidiff.comfyui.raunet.apply_raunet`.
"""

from __future__ import annotations

import math
from typing import Any

from ..core.raunet import CA_DOWNSCALE_METHODS, TWO_STAGE_MODES, UPSCALE_METHODS, is_whole
from ..core.schedule import TimeMode, sigma_range
from ..core.settings import CONTROLNET_RESIZE_MODE, RauNetSettings
from .node_common import time_mode_parameter
from .params import (
    ParameterError,
    ParameterSet,
    blocks,
    choice,
    number,
    optional,
    require_bool,
    require_fraction,
    require_number,
    yaml_only,
)
from .resampling import BLEH_NOTE, ca_downscale_methods, two_stage_modes, upscale_methods

PAIRS = "Valid pairs are read from the model: SD1.x/SD2.x 3->8, 6->5, 9->2; SDXL 3->5, 6->2."
CA_PAIRS = (
    "Valid pairs are read from the model: input k pairs with output n-k (n = 12 input blocks on SD1.x/SD2.x, "
    "9 on SDXL), e.g. SD1.x 4->8, 1->11; SDXL 4->5, 2->7."
)


def check_factor(name: str, value: Any) -> float:
    """A CA shrink factor: a finite number of at least 1."""
    factor = require_number(name, value)
    if not (factor >= 1.0 and math.isfinite(factor)):
        raise ParameterError(
            f"{name} = {value!r} is not valid; it must be at least 1 (1 = no downscale, 2 = half size)"
        )
    return factor


def _time(name: str, default: float, what: str, doc: str, advanced: bool = False) -> Any:
    tooltip = f"{what} (inclusive), in time_mode units. A start at the end of sampling (percent 1) switches it off."
    return number(name, default, doc, tooltip, advanced=advanced)


PARAMETERS = ParameterSet(
    (
        blocks(
            "input_blocks",
            "3",
            "input Downsample blocks for RAD, e.g. '3' or [3]",
            f"Comma list of input Downsample blocks for RAD (stride-4 dilated downsampling). {PAIRS}",
        ),
        blocks(
            "output_blocks",
            "8",
            "the paired output Upsample blocks for RAU, e.g. '8'",
            f"The paired output Upsample blocks (RAU), one per input block. {PAIRS}",
        ),
        time_mode_parameter(),
        _time("start_time", 0.0, "When RAD/RAU start", "when RAD/RAU start (inclusive)"),
        _time("end_time", 0.45, "When RAD/RAU end", "when RAD/RAU end (inclusive)"),
        choice(
            "upscale_mode",
            "bicubic",
            upscale_methods,
            f"RAU resampling: {', '.join(UPSCALE_METHODS)}; {BLEH_NOTE}",
            "How RAU resamples back to the exact skip size after RAD. nearest = the official "
            f"behaviour (ComfyUI's own Upsample, no patch). {BLEH_NOTE}",
        ),
        _time("ca_start_time", 0.0, "When the CA downscale starts", "when the CA downscale starts (inclusive)", True),
        _time("ca_end_time", 0.3, "When the CA downscale ends", "when the CA downscale ends (inclusive)", True),
        blocks(
            "ca_input_blocks",
            "4",
            "input blocks after which the map is shrunk, e.g. '4'",
            "Comma list of input blocks after which the map is shrunk (CA; no attention is changed). "
            f"Empty = off. {CA_PAIRS}",
            advanced=True,
        ),
        blocks(
            "ca_output_blocks",
            "8",
            "the paired output blocks that restore it, e.g. '8'",
            f"The paired output blocks that restore the exact skip size. {CA_PAIRS}",
            advanced=True,
        ),
        choice(
            "ca_upscale_mode",
            "bicubic",
            upscale_methods,
            f"CA restore resampling: {', '.join(UPSCALE_METHODS)}; {BLEH_NOTE}",
            f"How the CA output block resamples back to the exact skip size (official: bicubic). {BLEH_NOTE}",
            advanced=True,
        ),
        choice(
            "ca_downscale_mode",
            "avg_pool2d",
            ca_downscale_methods,
            f"CA downscale: {', '.join(CA_DOWNSCALE_METHODS)}; {BLEH_NOTE}",
            "How the CA input block shrinks: avg_pool2d (official, whole factors), "
            "adaptive_avg_pool2d (fractional factors), or a resampling method. Size: ceil(size / factor).",
            advanced=True,
        ),
        number(
            "ca_downscale_factor",
            2.0,
            "CA downscale factor, at least 1 (whole numbers for avg_pool2d)",
            "CA shrink factor: 2 = half size (official). At least 1; whole numbers for avg_pool2d.",
            check=check_factor,
            low=1.0,
            high=16.0,
            step=0.1,
            advanced=True,
        ),
        choice(
            "two_stage_upscale_mode",
            "disabled",
            two_stage_modes,
            f"first half of the RAU resample: {', '.join(TWO_STAGE_MODES)}; {BLEH_NOTE}",
            "If not disabled, RAU first resamples to half the skip size with this method, then "
            "the rest of the way with upscale_mode.",
            advanced=True,
        ),
        yaml_only(
            "ca_downscale_factor_w",
            None,
            optional(check_factor),
            "separate CA factor for the width (default: ca_downscale_factor)",
        ),
        yaml_only(
            "ca_input_after_skip_mode",
            False,
            require_bool,
            "true: shrink after the skip is stored (Deep Shrink style; pairs k -> n-1-k)",
        ),
        yaml_only(
            "ca_fadeout_start_time",
            None,
            optional(require_number),
            "time (time_mode units) from which the CA factor fades linearly to 1 at ca_end_time",
        ),
        yaml_only(
            "ca_fadeout_cap",
            0.0,
            require_fraction,
            "0-1: the fade never goes below this fraction of the CA effect (default 0)",
        ),
        choice(
            "controlnet_resize_mode",
            CONTROLNET_RESIZE_MODE,
            lambda: UPSCALE_METHODS,
            f"how ControlNet/T2I residuals are fitted to shrunk maps: {', '.join(UPSCALE_METHODS)}",
        ),
        yaml_only(
            "verbose", False, require_bool, "true to log the settings and, once per run, every resize with its sizes"
        ),
    )
)
DEFAULTS = PARAMETERS.defaults
"""The ApplyRAUNet node's defaults (the seed's for SD1.x, with the official avg_pool2d)."""


def build_settings(yaml_parameters: str | None = None, **inputs: Any) -> RauNetSettings:
    """Merge node inputs, defaults and ``yaml_parameters``; check every value.

    Raises :class:`ParameterError` (a ValueError) naming the input and its valid values.
    """
    return PARAMETERS.build(yaml_parameters, inputs, _checked_settings)


def _checked_settings(values: dict[str, Any]) -> RauNetSettings:
    settings = RauNetSettings(**values)
    _check_times(settings)
    _check_pooling(settings)
    return settings


def _check_times(settings: RauNetSettings) -> None:
    """Bounds and order of every time, without a model: any decreasing map keeps the order."""
    mode = settings.time_mode
    order = lambda p: 1.0 - p  # noqa: E731 (a stand-in for the model's percent_to_sigma)
    sigma_range(mode, settings.start_time, settings.end_time, order)
    ca = sigma_range(mode, settings.ca_start_time, settings.ca_end_time, order, names=("ca_start_time", "ca_end_time"))
    fade = settings.ca_fadeout_start_time
    if fade is None or ca.disabled:
        return
    sigma_range(mode, fade, fade, order, names=("ca_fadeout_start_time", "ca_fadeout_start_time"))
    start, end = settings.ca_start_time, settings.ca_end_time
    later = (lambda a, b: a > b) if mode == TimeMode.PERCENT else (lambda a, b: a < b)
    if later(start, fade) or later(fade, end):
        raise ParameterError(
            f"ca_fadeout_start_time = {fade:g} must lie between ca_start_time = {start:g} and "
            f"ca_end_time = {end:g} ({mode} mode)"
        )


def _check_pooling(settings: RauNetSettings) -> None:
    if settings.ca_downscale_mode != "avg_pool2d":
        return
    for name, factor in (
        ("ca_downscale_factor", settings.ca_downscale_factor),
        ("ca_downscale_factor_w", settings.factor_w),
    ):
        if not is_whole(factor):
            raise ParameterError(
                f"{name} = {factor:g} must be a whole number with ca_downscale_mode avg_pool2d (its kernel); "
                "use adaptive_avg_pool2d or a resampling method for fractional factors"
            )
