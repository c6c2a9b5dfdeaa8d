"""The MSW-MSA nodes: ``ApplyMSWMSAAttention`` and ``ApplyMSWMSAAttentionSimple``.

Ids, inputs and their order match the seed pack's, so saved workflows load unchanged;
each node only turns inputs into settings and calls :func:`msw_msa.apply_msw_msa`."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..core.presets import msw_msa_preset_for
from ..core.schedule import TIME_MODES
from ..log import logger
from . import msw_msa
from .model_info import unet_map_of
from .node_common import (
    ADVANCED,
    CATEGORY,
    MODEL_TYPES,
    SEARCH_ALIASES,
    TIME_TOOLTIP,
    YAML_TOOLTIP,
    choice_message,
    place_preset,
    resolve_family,
    schema,
    validation_message,
)


class ApplyMSWMSAAttention(io.ComfyNode):
    """Windowed (MSW-MSA) self-attention on chosen blocks, for speed and fewer artifacts."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="ApplyMSWMSAAttention",
            search_aliases=SEARCH_ALIASES["ApplyMSWMSAAttention"],
            display_name="Apply MSW-MSA Attention (HiDiffusion)",
            category=CATEGORY,
            description=(
                "HiDiffusion's MSW-MSA: self-attention of the chosen blocks runs inside 2x2 shifted windows, "
                "about 4x cheaper at high resolution, exact at every size and aspect ratio. "
                "Defaults are for SD1.x/SD2.x; for SDXL use input 4,5 and output 3,4,5."
            ),
            inputs=[
                io.Model.Input("model", tooltip="Model to patch; the input model itself is never changed."),
                io.String.Input(
                    "input_blocks",
                    default="1,2",
                    tooltip="Comma list of input blocks to window. SD1.x/SD2.x attention blocks: 1,2,4,5,7,8; SDXL: 4,5,7,8. "
                    "Lower numbers = higher resolution = bigger speed-up.",
                ),
                io.String.Input(
                    "middle_blocks",
                    default="",
                    tooltip="Middle block (0) to window, or empty. HiDiffusion never windows it.",
                ),
                io.String.Input(
                    "output_blocks",
                    default="9,10,11",
                    tooltip="Comma list of output blocks to window. SD1.x/SD2.x attention blocks: 3-11; SDXL: 0-5.",
                ),
                io.Combo.Input("time_mode", options=list(TIME_MODES), default="percent", tooltip=TIME_TOOLTIP),
                io.Float.Input(
                    "start_time",
                    default=0.0,
                    min=0.0,
                    max=999.0,
                    step=0.01,
                    tooltip="When windowing starts (inclusive), in time_mode units.",
                ),
                io.Float.Input(
                    "end_time",
                    default=1.0,
                    min=0.0,
                    max=999.0,
                    step=0.01,
                    tooltip="When windowing ends (inclusive), in time_mode units.",
                ),
                io.String.Input(
                    "yaml_parameters", optional=True, multiline=True, default="", tooltip=YAML_TOOLTIP, **ADVANCED
                ),
            ],
            outputs=[io.Model.Output(tooltip="The model with MSW-MSA attention.")],
        )

    @classmethod
    def validate_inputs(
        cls,
        input_blocks: str | None = None,
        middle_blocks: str | None = None,
        output_blocks: str | None = None,
        time_mode: str | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        yaml_parameters: str | None = "",
    ) -> bool | str:
        return validation_message(
            msw_msa.build_settings,
            {
                "input_blocks": input_blocks,
                "middle_blocks": middle_blocks,
                "output_blocks": output_blocks,
                "time_mode": time_mode,
                "start_time": start_time,
                "end_time": end_time,
                "yaml_parameters": "" if yaml_parameters is None else yaml_parameters,
            },
        )

    @classmethod
    def execute(
        cls,
        model: Any,
        input_blocks: str,
        middle_blocks: str,
        output_blocks: str,
        time_mode: str,
        start_time: float,
        end_time: float,
        yaml_parameters: str | None = None,
    ) -> io.NodeOutput:
        settings = msw_msa.build_settings(
            yaml_parameters,
            input_blocks=input_blocks,
            middle_blocks=middle_blocks,
            output_blocks=output_blocks,
            time_mode=time_mode,
            start_time=start_time,
            end_time=end_time,
        )
        return io.NodeOutput(msw_msa.apply_msw_msa(model, settings))


class ApplyMSWMSAAttentionSimple(io.ComfyNode):
    """MSW-MSA with the seed pack's preset for the model's family."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="ApplyMSWMSAAttentionSimple",
            search_aliases=SEARCH_ALIASES["ApplyMSWMSAAttentionSimple"],
            display_name="Apply MSW-MSA Attention Simple (HiDiffusion)",
            category=CATEGORY,
            description=(
                "HiDiffusion's MSW-MSA with a preset: SD1.x/SD2.x input 1,2 / output 9,10,11, "
                "SDXL input 4,5 / output 3,4,5, from 20% to 100% of sampling."
            ),
            inputs=[
                io.Combo.Input(
                    "model_type",
                    options=list(MODEL_TYPES),
                    default="auto",
                    tooltip="auto reads the family from the model's structure. SD15 covers SD1.x and SD2.x.",
                ),
                io.Model.Input("model", tooltip="Model to patch; the input model itself is never changed."),
            ],
            outputs=[io.Model.Output(tooltip="The model with MSW-MSA attention.")],
        )

    @classmethod
    def validate_inputs(cls, model_type: str | None = None) -> bool | str:
        return choice_message({"model_type": (MODEL_TYPES, model_type)})

    @classmethod
    def execute(cls, model_type: str, model: Any) -> io.NodeOutput:
        family = resolve_family("ApplyMSWMSAAttentionSimple", model_type, model)
        preset = place_preset("ApplyMSWMSAAttentionSimple", msw_msa_preset_for, family, unet_map_of(model))
        logger.info(f"ApplyMSWMSAAttentionSimple: Using preset {family}: {preset.describe()}")
        settings = msw_msa.MswMsaSettings(
            input_blocks=preset.input_blocks,
            middle_blocks=preset.middle_blocks,
            output_blocks=preset.output_blocks,
            time_mode="percent",
            start_time=preset.start_percent,
            end_time=preset.end_percent,
        )
        return io.NodeOutput(msw_msa.apply_msw_msa(model, settings))


MSW_MSA_NODES = [ApplyMSWMSAAttention, ApplyMSWMSAAttentionSimple]
