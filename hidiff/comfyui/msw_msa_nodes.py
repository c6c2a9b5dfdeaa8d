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
from .msw_msa_settings import MswMsaSettings
from .node_common import (
    MODEL_TYPES,
    PackNode,
    SettingsNode,
    choice_message,
    model_input,
    model_type_input,
    place_preset,
    resolve_family,
)

_OUTPUT_TOOLTIP = "The model with MSW-MSA attention."


class ApplyMSWMSAAttention(SettingsNode):
    """HiDiffusion's MSW-MSA: self-attention of the chosen blocks runs inside 2x2 shifted
    windows, about 4x cheaper at high resolution, exact at every size and aspect ratio. Defaults
    are for SD1.x/SD2.x; for SDXL use input 4,5 and output 3,4,5.
    """

    node_id = "ApplyMSWMSAAttention"
    display_name = "Apply MSW-MSA Attention (HiDiffusion)"
    output_tooltip = _OUTPUT_TOOLTIP
    settings_module = settings

    @classmethod
    def apply(cls, model: Any, settings: MswMsaSettings) -> Any:
        return msw_msa.apply_msw_msa(model, settings)


class ApplyMSWMSAAttentionSimple(PackNode):
    """HiDiffusion's MSW-MSA with a preset: SD1.x/SD2.x input 1,2 / output 9,10,11, SDXL input
    4,5 / output 3,4,5, from 20% to 100% of sampling.
    """

    node_id = "ApplyMSWMSAAttentionSimple"
    display_name = "Apply MSW-MSA Attention Simple (HiDiffusion)"
    output_tooltip = _OUTPUT_TOOLTIP

    @classmethod
    def node_inputs(cls) -> list[Any]:
        return [model_type_input(), model_input()]

    @classmethod
    def validate_inputs(cls, model_type: str | None = None) -> bool | str:
        return choice_message({"model_type": (MODEL_TYPES, model_type)})

    @classmethod
    def execute(cls, model_type: str, model: Any) -> io.NodeOutput:
        family = resolve_family(cls.node_id, model_type, model)
        preset = place_preset(cls.node_id, msw_msa_preset_for, family, unet_map_of(model))
        logger.info(f"{cls.node_id}: Using preset {family}: {preset.describe()}")
        return io.NodeOutput(msw_msa.apply_msw_msa(model, settings.build_settings(None, **preset.settings())))


MSW_MSA_NODES = [ApplyMSWMSAAttention, ApplyMSWMSAAttentionSimple]
