"""The RAU-Net V3 nodes. Ids, inputs and their order match the seed pack's, so saved
workflows load unchanged; each node only turns inputs into settings and calls
:func:`hidiff.comfyui.raunet.apply_raunet`."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..core.presets import RAUNET_RES_MODES, RauNetPreset, raunet_preset_for
from ..core.schedule import TIME_MODES
from ..log import logger
from . import node_common as base
from . import raunet
from .params import require_choice
from .resampling import BLEH_NOTE, ca_downscale_methods, two_stage_modes, upscale_methods

DEFAULT_MODE = "default"
_MODEL_TOOLTIP = "Model to patch; the input model itself is never changed."
_OUTPUT_TOOLTIP = "The model with RAU-Net."
_PAIRS = "Valid pairs are read from the model: SD1.x/SD2.x 3->8, 6->5, 9->2; SDXL 3->5, 6->2."
_CA_PAIRS = (
    "Valid pairs are read from the model: input k pairs with output n-k (n = 12 input blocks on SD1.x/SD2.x, "
    "9 on SDXL), e.g. SD1.x 4->8, 1->11; SDXL 4->5, 2->7."
)


def _time_input(name: str, default: float, what: str, advanced: dict | None = None) -> io.Float.Input:
    return io.Float.Input(
        name,
        default=default,
        min=0.0,
        max=999.0,
        step=0.01,
        tooltip=f"{what} (inclusive), in time_mode units. A start at the end of sampling (percent 1) switches it off.",
        **(advanced or {}),
    )


class ApplyRAUNet(io.ComfyNode):
    """HiDiffusion's RAU-Net with every setting of the seed pack."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return base.schema(
            node_id="ApplyRAUNet",
            search_aliases=base.SEARCH_ALIASES["ApplyRAUNet"],
            display_name="Apply RAU-Net (HiDiffusion)",
            category=base.CATEGORY,
            description=(
                "HiDiffusion's RAU-Net: early in sampling the deep UNet blocks run at the model's native size "
                "(RAD/RAU, and the optional CA downscale), so SD1.x/SD2.x/SDXL can compose images well above their "
                "training resolution without duplicated subjects. Exact at every size. Defaults are for SD1.x/SD2.x."
            ),
            inputs=[
                io.Model.Input("model", tooltip=_MODEL_TOOLTIP),
                io.String.Input(
                    "input_blocks",
                    default="3",
                    tooltip=f"Comma list of input Downsample blocks for RAD (stride-4 dilated downsampling). {_PAIRS}",
                ),
                io.String.Input(
                    "output_blocks",
                    default="8",
                    tooltip=f"The paired output Upsample blocks (RAU), one per input block. {_PAIRS}",
                ),
                io.Combo.Input("time_mode", options=list(TIME_MODES), default="percent", tooltip=base.TIME_TOOLTIP),
                _time_input("start_time", 0.0, "When RAD/RAU start"),
                _time_input("end_time", 0.45, "When RAD/RAU end"),
                io.Combo.Input(
                    "upscale_mode",
                    options=list(upscale_methods()),
                    default="bicubic",
                    tooltip="How RAU resamples back to the exact skip size after RAD. nearest = the official "
                    f"behaviour (ComfyUI's own Upsample, no patch). {BLEH_NOTE}",
                ),
                _time_input("ca_start_time", 0.0, "When the CA downscale starts", base.ADVANCED),
                _time_input("ca_end_time", 0.3, "When the CA downscale ends", base.ADVANCED),
                io.String.Input(
                    "ca_input_blocks",
                    default="4",
                    tooltip=f"Comma list of input blocks after which the map is shrunk (CA; no attention is changed). "
                    f"Empty = off. {_CA_PAIRS}",
                    **base.ADVANCED,
                ),
                io.String.Input(
                    "ca_output_blocks",
                    default="8",
                    tooltip=f"The paired output blocks that restore the exact skip size. {_CA_PAIRS}",
                    **base.ADVANCED,
                ),
                io.Combo.Input(
                    "ca_upscale_mode",
                    options=list(upscale_methods()),
                    default="bicubic",
                    tooltip=f"How the CA output block resamples back to the exact skip size (official: bicubic). "
                    f"{BLEH_NOTE}",
                    **base.ADVANCED,
                ),
                io.Combo.Input(
                    "ca_downscale_mode",
                    options=list(ca_downscale_methods()),
                    default="avg_pool2d",
                    tooltip="How the CA input block shrinks: avg_pool2d (official, whole factors), "
                    "adaptive_avg_pool2d (fractional factors), or a resampling method. Size: ceil(size / factor).",
                    **base.ADVANCED,
                ),
                io.Float.Input(
                    "ca_downscale_factor",
                    default=2.0,
                    min=1.0,
                    max=16.0,
                    step=0.1,
                    tooltip="CA shrink factor: 2 = half size (official). At least 1; whole numbers for avg_pool2d.",
                    **base.ADVANCED,
                ),
                io.Combo.Input(
                    "two_stage_upscale_mode",
                    options=list(two_stage_modes()),
                    default="disabled",
                    tooltip="If not disabled, RAU first resamples to half the skip size with this method, then "
                    "the rest of the way with upscale_mode.",
                    **base.ADVANCED,
                ),
                io.String.Input(
                    "yaml_parameters",
                    optional=True,
                    multiline=True,
                    default="",
                    tooltip=raunet_yaml_tooltip(),
                    **base.ADVANCED,
                ),
            ],
            outputs=[io.Model.Output(tooltip=_OUTPUT_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(
        cls,
        input_blocks: str | None = None,
        output_blocks: str | None = None,
        time_mode: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        upscale_mode: str | None = None,
        ca_start_time: float | None = None,
        ca_end_time: float | None = None,
        ca_input_blocks: str | None = None,
        ca_output_blocks: str | None = None,
        ca_upscale_mode: str | None = None,
        ca_downscale_mode: str | None = None,
        ca_downscale_factor: float | None = None,
        two_stage_upscale_mode: str | None = None,
        yaml_parameters: str | None = "",
    ) -> bool | str:
        inputs = dict(locals())
        del inputs["cls"]
        inputs["yaml_parameters"] = "" if yaml_parameters is None else yaml_parameters
        return base.validation_message(raunet.build_settings, inputs)

    @classmethod
    def execute(
        cls,
        model: Any,
        input_blocks: str,
        output_blocks: str,
        time_mode: str,
        start_time: float,
        end_time: float,
        upscale_mode: str,
        ca_start_time: float,
        ca_end_time: float,
        ca_input_blocks: str,
        ca_output_blocks: str,
        ca_upscale_mode: str,
        ca_downscale_mode: str,
        ca_downscale_factor: float,
        two_stage_upscale_mode: str,
        yaml_parameters: str | None = None,
    ) -> io.NodeOutput:
        inputs = dict(locals())
        for name in ("cls", "model", "yaml_parameters"):
            del inputs[name]
        settings = raunet.build_settings(yaml_parameters, **inputs)
        return io.NodeOutput(raunet.apply_raunet(model, settings))


def raunet_yaml_tooltip() -> str:
    """The YAML tooltip, with the advanced keys only YAML can set."""
    return f"{base.YAML_TOOLTIP} Advanced keys: {', '.join(raunet.YAML_ONLY_KEYS)}."


class ApplyRAUNetSimple(io.ComfyNode):
    """RAU-Net with the seed pack's preset for the model's family and a resolution hint."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return base.schema(
            node_id="ApplyRAUNetSimple",
            search_aliases=base.SEARCH_ALIASES["ApplyRAUNetSimple"],
            display_name="Apply RAU-Net Simple (HiDiffusion)",
            category=base.CATEGORY,
            description=(
                "HiDiffusion's RAU-Net with the seed pack's presets (SD1.x/SD2.x: in 3 / out 8, CA 1 / 11; "
                "SDXL: in 3 / out 5, CA 4 / 5). The chosen preset is written to the log."
            ),
            inputs=[
                io.Model.Input("model", tooltip=_MODEL_TOOLTIP),
                io.Combo.Input(
                    "model_type",
                    options=list(base.MODEL_TYPES),
                    default="auto",
                    tooltip="auto reads the family from the model's structure. SD15 covers SD1.x and SD2.x.",
                ),
                io.Combo.Input(
                    "res_mode",
                    options=list(RAUNET_RES_MODES),
                    default=RAUNET_RES_MODES[0],
                    tooltip="Preset strength; a hint, it need not match the actual size. SDXL low switches "
                    "RAU-Net off (SDXL renders 1024 natively).",
                ),
                io.Combo.Input(
                    "upscale_mode",
                    options=[DEFAULT_MODE, *upscale_methods()],
                    default=DEFAULT_MODE,
                    tooltip=f"RAU resampling back to the skip size; default = bicubic. {BLEH_NOTE}",
                ),
                io.Combo.Input(
                    "ca_upscale_mode",
                    options=[DEFAULT_MODE, *upscale_methods()],
                    default=DEFAULT_MODE,
                    tooltip=f"CA restore resampling; default = bicubic. {BLEH_NOTE}",
                ),
            ],
            outputs=[io.Model.Output(tooltip=_OUTPUT_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(
        cls,
        model_type: str | None = None,
        res_mode: str | None = None,
        upscale_mode: str | None = None,
        ca_upscale_mode: str | None = None,
    ) -> bool | str:
        methods = (DEFAULT_MODE, *upscale_methods())
        return base.choice_message(
            {
                "model_type": (base.MODEL_TYPES, model_type),
                "res_mode": (RAUNET_RES_MODES, res_mode),
                "upscale_mode": (methods, upscale_mode),
                "ca_upscale_mode": (methods, ca_upscale_mode),
            }
        )

    @classmethod
    def execute(
        cls, model: Any, model_type: str, res_mode: str, upscale_mode: str, ca_upscale_mode: str
    ) -> io.NodeOutput:
        family = base.resolve_family("ApplyRAUNetSimple", model_type, model)
        res = require_choice("res_mode", res_mode, RAUNET_RES_MODES).split(" ", 1)[0]
        preset = base.place_preset("ApplyRAUNetSimple", raunet_preset_for, family, res, base.unet_map_of(model))
        if upscale_mode != DEFAULT_MODE:
            preset = preset.edited(upscale_mode=upscale_mode)
        if ca_upscale_mode != DEFAULT_MODE:
            preset = preset.edited(ca_upscale_mode=ca_upscale_mode)
        logger.info(f"ApplyRAUNetSimple: Using preset {family} {res}: {preset.describe()}")
        return io.NodeOutput(raunet.apply_raunet(model, preset_settings(preset)))


def preset_settings(preset: RauNetPreset) -> raunet.RauNetSettings:
    """The checked settings of a Simple preset (percent times)."""
    return raunet.build_settings(
        input_blocks=preset.input_blocks,
        output_blocks=preset.output_blocks,
        time_mode="percent",
        start_time=preset.start_percent,
        end_time=preset.end_percent,
        upscale_mode=preset.upscale_mode,
        ca_start_time=preset.ca_start_percent,
        ca_end_time=preset.ca_end_percent,
        ca_input_blocks=preset.ca_input_blocks,
        ca_output_blocks=preset.ca_output_blocks,
        ca_upscale_mode=preset.ca_upscale_mode,
        ca_downscale_mode=preset.ca_downscale_mode,
        ca_downscale_factor=preset.ca_downscale_factor,
    )


RAUNET_NODES = [ApplyRAUNet, ApplyRAUNetSimple]
