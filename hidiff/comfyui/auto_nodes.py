"""``ApplyHiDiffusion`` ("HiDiffusion"): the whole method with no block knowledge, and
``HiDiffusionInspect``: what it would do, as text.

Both read the model's structure and native size, compare it with the target size and
follow a schedule (:mod:`hidiff.core.plan`): the measured one by default, the official one
with ``schedule: official`` (:mod:`hidiff.core.measured`). The auto node then applies
exactly what ``ApplyRAUNet`` + ``ApplyMSWMSAAttention`` would with the logged inputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io, ui

from ..core.cost import unet_costs
from ..core.measured import SCHEDULE_CHOICES, SCHEDULE_NAMES
from ..core.official import OFFICIAL_KEYS, aggressive_by_default
from ..core.plan import AutoPlan, plan_for
from ..core.unet_map import FAMILY_NAMES, Family
from ..core.windows import parse_window_grid
from ..log import logger
from . import msw_msa, raunet
from .model_info import default_native_latent, in_channels_of, is_edm_eps, unet_map_of
from .node_common import PackNode
from .params import (
    ADVANCED,
    ParameterError,
    naming_the_yaml,
    parse_yaml_parameters,
    require_bool,
    require_choice,
    require_native_resolution,
)
from .run_state import install_native_gate

ADVANCED_KEYS = {
    "schedule": "measured (default: measured in the quality lab: native windows, and SDXL's RAD at the first "
    "Downsample) or official (the paper's schedule for every family), or one of the paper's by name at any size: "
    + "; ".join(f"{', '.join(keys)} ({FAMILY_NAMES[family]})" for family, keys in OFFICIAL_KEYS.items()),
    "native_resolution": "the model's native size in pixels (default: from the model: SD1.x 512, SD2.x-v 768, SDXL 1024)",
    "turbo": "true for SDXL-Turbo-style few-step models (pooling only, first half of sampling)",
    "aggressive": "SDXL below 4096px: RAD first, then pooling (default: true, except for inpainting UNets "
    "and Playground v2.5-style EDM models)",
    "text_to_image_controlnet": "true: the official SDXL ControlNet schedule (pooling until 50% instead of 40%)",
    "window_grid": "MSW-MSA's grid of windows: 2x2 (the official method), native (no window larger than the "
    "native token grid) or RxC (default: native with the measured schedule, 2x2 with the official ones)",
    "verbose": "true: also log each effect's settings",
}


@dataclass(frozen=True)
class AutoOptions:
    """The checked ``advanced`` keys."""

    native_resolution: int | None = None
    schedule: str = SCHEDULE_NAMES[0]
    turbo: bool = False
    aggressive: bool | None = None
    text_to_image_controlnet: bool = False
    window_grid: str | None = None
    """None: the schedule's own (:attr:`~hidiff.core.official.Schedule.window_grid`); else it replaces that."""
    verbose: bool = False


def parse_advanced(text: str | None) -> AutoOptions:
    """The ``advanced`` YAML, checked; errors name the key and list the valid ones."""
    return auto_options(parse_yaml_parameters(text, ADVANCED_KEYS, input_name="advanced"))


def auto_options(values: dict[str, Any]) -> AutoOptions:
    """The auto node's keys of a parsed ``advanced`` mapping, checked (other keys are ignored)."""
    values = {key: value for key, value in values.items() if key in ADVANCED_KEYS}
    with naming_the_yaml(values, input_name="advanced"):
        native = require_native_resolution(values.get("native_resolution"))
        flags = {
            key: require_bool(key, values[key])
            for key in ("turbo", "aggressive", "text_to_image_controlnet", "verbose")
            if key in values
        }
        if "schedule" in values:
            flags["schedule"] = require_choice("schedule", values["schedule"], SCHEDULE_CHOICES)
        if "window_grid" in values:
            flags["window_grid"] = parse_window_grid(values["window_grid"])
    return AutoOptions(native_resolution=native, **flags)


def native_latent(model: Any, family: Family, options: AutoOptions) -> int | None:
    """The native latent side: the user's, else the model's (768px for SD2.x v-prediction models)."""
    if options.native_resolution is not None:
        return options.native_resolution // 8
    return default_native_latent(model, family)


def aggressive_for(model: Any, options: AutoOptions) -> bool:
    """The user's ``aggressive``, else the official default read from the model's structure."""
    if options.aggressive is not None:
        return options.aggressive
    return aggressive_by_default(in_channels_of(model), playground=is_edm_eps(model))


def target_latent(width: int, height: int, latent: dict | None) -> tuple[int, int]:
    """(height, width) of the latent to be sampled: the connected latent's, else width/height / 8."""
    if latent is not None and "samples" in latent:
        samples = latent["samples"]
        return int(samples.shape[-2]), int(samples.shape[-1])
    return max(1, height // 8), max(1, width // 8)


def make_plan(
    model: Any, width: int, height: int, latent: dict | None, advanced: str | None
) -> tuple[AutoPlan, AutoOptions]:
    """The plan for this model and size, with the advanced options applied."""
    options = parse_advanced(advanced)
    latent_h, latent_w = target_latent(width, height, latent)
    return plan_with(model, latent_h, latent_w, options), options


def plan_with(model: Any, latent_h: int, latent_w: int, options: AutoOptions) -> AutoPlan:
    """The plan for this model and a latent of ``latent_h`` x ``latent_w``, with ``options``."""
    unet = unet_map_of(model)
    family = unet.family if unet.supported else None
    try:
        plan = plan_for(
            unet,
            latent_h,
            latent_w,
            native_latent=native_latent(model, family, options) if family else None,
            turbo=options.turbo,
            aggressive=aggressive_for(model, options),
            text_to_image_controlnet=options.text_to_image_controlnet,
            schedule_name=options.schedule,
        )
    except ValueError as exc:
        raise ParameterError(f"HiDiffusion: {exc}") from None
    if options.window_grid is not None and plan.schedule is not None:
        plan = dataclasses.replace(plan, schedule=dataclasses.replace(plan.schedule, window_grid=options.window_grid))
    return plan


def apply_plan(
    model: Any, plan: AutoPlan, use_raunet: bool, use_msw_msa: bool, options: AutoOptions | None = None
) -> Any:
    """Apply the plan with the advanced nodes' own code, so it equals them set by hand above
    the native size, and gate it per call: any UNet call at or below the plan's native size
    (a hires fix's first pass, a tiled upscaler's tiles) runs as the unpatched model."""
    patched = model
    options = options or AutoOptions()
    if use_raunet and (plan.rad_pair or plan.pool_pair):
        patched = raunet.apply_raunet(patched, plan.raunet_settings(verbose=options.verbose))
    if use_msw_msa and (plan.msw_input_blocks or plan.msw_output_blocks):
        patched = msw_msa.apply_msw_msa(patched, plan.msw_settings(verbose=options.verbose))
    if patched is not model:
        install_native_gate(patched, plan.native_latent)
    return patched


_SIZE_INPUTS = [
    io.Int.Input(
        side,
        default=2048,
        min=64,
        max=16384,
        step=8,
        tooltip=f"Target image {side} in pixels (ignored when a latent is connected).",
    )
    for side in ("width", "height")
]
_LATENT_INPUT = io.Latent.Input(
    "latent", optional=True, tooltip="The latent you will sample; its size is the target size."
)
_ADVANCED_INPUT = io.String.Input(
    "advanced",
    optional=True,
    multiline=True,
    default="",
    **ADVANCED,
    tooltip="Optional YAML: schedule, native_resolution, turbo, aggressive, text_to_image_controlnet, window_grid, verbose.",
)


class ApplyHiDiffusion(PackNode):
    """HiDiffusion with no block knowledge: reads the model's structure and native size,
    compares it with the target size and applies MSW-MSA and a RAU-Net schedule: by default the
    one the quality lab measured (native windows; for SDXL also RAD at the first Downsample),
    with schedule: official the official one. At or below the native size it does nothing and
    says so, and the model it returns runs any sampling call at or below the native size as the
    unpatched model (a hires fix's first pass, a tiled upscaler's tiles).
    """

    node_id = "ApplyHiDiffusion"
    display_name = "HiDiffusion"
    output_tooltip = "The model with HiDiffusion for this size (or unchanged at native size)."

    @classmethod
    def yaml_keys(cls) -> dict[str, str]:
        return ADVANCED_KEYS

    @classmethod
    def node_inputs(cls) -> list[Any]:
        return [
            io.Model.Input("model", tooltip="SD1.x, SD2.x or SDXL model; it is never changed."),
            *_SIZE_INPUTS,
            io.Boolean.Input("raunet", default=True, tooltip="RAU-Net: one subject instead of duplicates, and faster."),
            io.Boolean.Input(
                "msw_msa", default=True, tooltip="MSW-MSA: windowed self-attention, faster at high resolution."
            ),
            _LATENT_INPUT,
            _ADVANCED_INPUT,
        ]

    @classmethod
    def validate_inputs(cls, advanced: str | None = "") -> bool | str:
        try:
            parse_advanced(advanced or "")
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls,
        model: Any,
        width: int,
        height: int,
        raunet: bool,
        msw_msa: bool,
        latent: dict | None = None,
        advanced: str | None = None,
    ) -> io.NodeOutput:
        plan, options = make_plan(model, width, height, latent, advanced)
        logger.info(f"HiDiffusion: {plan.describe()}")
        if not plan.active:
            return io.NodeOutput(model)
        return io.NodeOutput(apply_plan(model, plan, raunet, msw_msa, options))


class HiDiffusionInspect(PackNode):
    """Shows, for the loaded model and a size, which blocks each HiDiffusion effect touches, at
    which sampling percents, and the feature-map size of every level in each phase.
    """

    node_id = "HiDiffusionInspect"
    display_name = "HiDiffusion Inspect"
    output_type = io.String
    output_tooltip = "The report, as text."
    is_output_node = True

    @classmethod
    def yaml_keys(cls) -> dict[str, str]:
        return ADVANCED_KEYS

    @classmethod
    def node_inputs(cls) -> list[Any]:
        return [io.Model.Input("model", tooltip="The model to inspect."), *_SIZE_INPUTS, _LATENT_INPUT, _ADVANCED_INPUT]

    @classmethod
    def execute(
        cls, model: Any, width: int, height: int, latent: dict | None = None, advanced: str | None = None
    ) -> io.NodeOutput:
        plan, _ = make_plan(model, width, height, latent, advanced)
        unet = unet_map_of(model)
        report = plan.describe(unet_costs(model.get_model_object("diffusion_model"), unet) if plan.active else None)
        logger.info(f"HiDiffusion Inspect: {report}")
        return io.NodeOutput(report, ui=ui.PreviewText(report))


AUTO_NODES = [ApplyHiDiffusion, HiDiffusionInspect]
