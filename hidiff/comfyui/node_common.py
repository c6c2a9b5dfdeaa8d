"""What every node of the pack shares: category, tooltips, input checks, family choice."""

from __future__ import annotations

from typing import Any

from ..core.presets import PresetPlacementError
from ..core.unet_map import FAMILY_NAMES, Family
from .model_info import unet_map_of
from .params import ParameterError

CATEGORY = "model_patches/unet"
MODEL_TYPES = ("auto", "SD15", "SDXL")

TIME_TOOLTIP = (
    "How start_time and end_time are written: percent = sampling percent of the model's noise schedule "
    "(0 = start, 1 = end; not a fraction of steps), timestep = 999 (start) to 0, sigma = raw noise level (high to low)."
)
YAML_TOOLTIP = (
    "Optional YAML mapping that overrides any input by name and sets advanced keys; an unknown key is an "
    "error that lists the valid ones. See the README."
)


def validation_message(build: Any, inputs: dict[str, Any]) -> bool | str:
    """Run a settings builder on the widget values known at queue time.

    Linked inputs are not known yet (ComfyUI passes None); they are checked in execute.
    """
    if any(value is None for value in inputs.values()):
        return True
    try:
        build(**inputs)
    except ValueError as exc:
        return str(exc)
    return True


def resolve_family(node: str, model_type: str, model: Any) -> Family:
    """The family a Simple node uses: the model's own for ``auto``, else the chosen one if it fits."""
    unet = unet_map_of(model)
    supported = ", ".join(FAMILY_NAMES.values())
    if not unet.supported or unet.family is None:
        raise ParameterError(f"{node}: applies to {supported} UNets; this model is {unet.describe()}")
    if model_type == "auto":
        return unet.family
    try:
        chosen = Family(model_type)
    except ValueError:
        raise ParameterError(
            f"{node}: model_type = {model_type!r} is not valid; use one of {', '.join(MODEL_TYPES)}"
        ) from None
    if chosen is not unet.family:
        raise ParameterError(
            f"{node}: model_type = {model_type} does not fit this model, which is {unet.describe()}; "
            f"use auto or {unet.family}"
        )
    return chosen


def place_preset(node: str, place: Any, *args: Any) -> Any:
    """A preset placed on the model's blocks, or an error naming the node and the model."""
    try:
        return place(*args)
    except PresetPlacementError as exc:
        raise ParameterError(f"{node}: {exc}; use the advanced node with blocks of your choice") from None


def choice_message(choices: dict[str, tuple[tuple[str, ...], Any]]) -> bool | str:
    """Queue-time check of dropdown values ({input: (options, value)}): ComfyUI's validator
    does not check the options of V3 dropdowns, so a stale saved value would otherwise only
    fail when the node runs. Linked (unknown, None) values are skipped."""
    for name, (options, value) in choices.items():
        if value is not None and value not in options:
            return f"{name} = {value!r} is not valid; use one of {', '.join(options)}"
    return True
