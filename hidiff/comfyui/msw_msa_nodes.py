"""The MSW-MSA nodes: ``ApplyMSWMSAAttention`` and ``ApplyMSWMSAAttentionSimple``.

Ids, inputs and their order match the seed pack's, so saved workflows load unchanged;
each node only turns inputs into settings and calls :func:`msw_msa.apply_msw_msa`."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..core.presets import msw_msa_preset_for
from ..log import logger
from . import msw_msa
from . import msw_msa_settings as settings
from .model_info import unet_map_of
from .node_common import (
    MODEL_TYPES,
    YAML_TOOLTIP,
    choice_message,
    model_input,
    place_preset,
    resolve_family,
    schema,
    yaml_parameters_input,
)


class ApplyMSWMSAAttention(io.ComfyNode):
    """HiDiffusion's MSW-MSA: self-attention of the chosen blocks runs inside 2x2 shifted
    windows, about 4x cheaper at high resolution, exact at every size and aspect ratio. Defaults
    are for SD1.x/SD2.x; for SDXL use input 4,5 and output 3,4,5.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            cls,
            node_id="ApplyMSWMSAAttention",
            display_name="Apply MSW-MSA Attention (HiDiffusion)",
            inputs=[
                model_input(),
                *settings.PARAMETERS.inputs(),
                yaml_parameters_input(YAML_TOOLTIP),
            ],
            outputs=[io.Model.Output(tooltip="The model with MSW-MSA attention.")],
        )

    @classmethod
    def validate_inputs(cls, **inputs: Any) -> bool | str:
        return settings.PARAMETERS.queue_check(settings.build_settings, inputs)

    @classmethod
    def execute(cls, model: Any, yaml_parameters: str | None = None, **inputs: Any) -> io.NodeOutput:
        return io.NodeOutput(msw_msa.apply_msw_msa(model, settings.build_settings(yaml_parameters, **inputs)))


class ApplyMSWMSAAttentionSimple(io.ComfyNode):
    """HiDiffusion's MSW-MSA with a preset: SD1.x/SD2.x input 1,2 / output 9,10,11, SDXL input
    4,5 / output 3,4,5, from 20% to 100% of sampling.
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            cls,
            node_id="ApplyMSWMSAAttentionSimple",
            display_name="Apply MSW-MSA Attention Simple (HiDiffusion)",
            inputs=[
                io.Combo.Input(
                    "model_type",
                    options=list(MODEL_TYPES),
                    default="auto",
                    tooltip="auto reads the family from the model's structure. SD15 covers SD1.x and SD2.x.",
                ),
                model_input(),
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
        return io.NodeOutput(msw_msa.apply_msw_msa(model, settings.build_settings(None, **preset.settings())))


MSW_MSA_NODES = [ApplyMSWMSAAttention, ApplyMSWMSAAttentionSimple]
