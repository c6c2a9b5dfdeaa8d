"""The RAU-Net V3 nodes. Ids, inputs and their order match the seed pack's, so saved
workflows load unchanged; each node only turns inputs into settings and calls
:func:`hidiff.comfyui.raunet.apply_raunet`."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..core.presets import RAUNET_STRENGTHS, raunet_preset_for
from ..log import logger
from . import node_common as base
from . import raunet
from . import raunet_settings as settings
from .params import require_choice
from .raunet_settings import RauNetSettings
from .resampling import BLEH_NOTE, upscale_methods

DEFAULT_MODE = "default"
RAUNET_RES_MODES = ("high (1536-2048)", "low (1024 or lower)", "ultra (over 2048)")
"""``res_mode``'s options, as the seed pack saved them; the first word names the preset."""
assert tuple(mode.split(" ", 1)[0] for mode in RAUNET_RES_MODES) == RAUNET_STRENGTHS
_OUTPUT_TOOLTIP = "The model with RAU-Net."


class ApplyRAUNet(base.SettingsNode):
    """HiDiffusion's RAU-Net: early in sampling the deep UNet blocks run at the model's native
    size (RAD/RAU, and the optional CA downscale), so SD1.x/SD2.x/SDXL can compose images well
    above their training resolution without duplicated subjects. Exact at every size. Defaults
    are for SD1.x/SD2.x.
    """

    node_id = "ApplyRAUNet"
    display_name = "Apply RAU-Net (HiDiffusion)"
    output_tooltip = _OUTPUT_TOOLTIP
    settings_module = settings
    yaml_tooltip = f"{base.YAML_TOOLTIP} Advanced keys: {', '.join(settings.PARAMETERS.yaml_only_names)}."

    @classmethod
    def apply(cls, model: Any, settings: RauNetSettings) -> Any:
        return raunet.apply_raunet(model, settings)


class ApplyRAUNetSimple(base.PackNode):
    """HiDiffusion's RAU-Net with the seed pack's presets (SD1.x/SD2.x: in 3 / out 8, CA 1 / 11;
    SDXL: in 3 / out 5, CA 4 / 5). The chosen preset is written to the log.
    """

    node_id = "ApplyRAUNetSimple"
    display_name = "Apply RAU-Net Simple (HiDiffusion)"
    output_tooltip = _OUTPUT_TOOLTIP

    @classmethod
    def node_inputs(cls) -> list[Any]:
        return [
            base.model_input(),
            base.model_type_input(),
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
        ]

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
        family = base.resolve_family(cls.node_id, model_type, model)
        res = require_choice("res_mode", res_mode, RAUNET_RES_MODES).split(" ", 1)[0]
        preset = base.place_preset(cls.node_id, raunet_preset_for, family, res, base.unet_map_of(model))
        if upscale_mode != DEFAULT_MODE:
            preset = preset.edited(upscale_mode=upscale_mode)
        if ca_upscale_mode != DEFAULT_MODE:
            preset = preset.edited(ca_upscale_mode=ca_upscale_mode)
        logger.info(f"{cls.node_id}: Using preset {family} {res}: {preset.describe()}")
        return io.NodeOutput(raunet.apply_raunet(model, settings.build_settings(None, **preset.settings())))


RAUNET_NODES = [ApplyRAUNet, ApplyRAUNetSimple]
