"""What every node of the pack shares: category, schema extras, tooltips, input checks, family choice."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, ClassVar

from comfy_api.latest import io

from ..core.presets import PresetPlacementError
from ..core.schedule import TIME_MODES
from ..core.unet_map import FAMILY_NAMES, Family
from .model_info import unet_map_of
from .params import ADVANCED, Parameter, ParameterError, choice

_OLD_UNET_CATEGORY = "model_patches/unet"


def _core_unet_category() -> str:
    """Core Deep Shrink's category in the running ComfyUI, so the pack sits next to it.

    ``model_patches/unet`` on 0.3.64, ``model/patch/unet`` since core moved it.
    """
    try:
        from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

        return PatchModelAddDownscale.define_schema().category or _OLD_UNET_CATEGORY
    except Exception:  # noqa: BLE001 (a ComfyUI without it or with another shape: keep the old place)
        return _OLD_UNET_CATEGORY


CATEGORY = _core_unet_category()

_SCHEMA_FIELDS = frozenset(field.name for field in dataclasses.fields(io.Schema))
_NEWER_SCHEMA_FIELDS = frozenset({"search_aliases"})
"""Schema fields that ComfyUI 0.3.64 does not know (its Schema refuses unknown keywords)."""


def schema(node: type, node_id: str, **fields: Any) -> io.Schema:
    """The ``io.Schema`` of one of our nodes: its docstring is the description users read, it
    sits in :data:`CATEGORY` with its :data:`SEARCH_ALIASES`, and the newer optional fields
    are set only where the running ComfyUI knows them."""
    fields = {
        "node_id": node_id,
        "description": " ".join((node.__doc__ or "").split()),
        "category": CATEGORY,
        "search_aliases": SEARCH_ALIASES[node_id],
        **fields,
    }
    return io.Schema(
        **{name: value for name, value in fields.items() if name not in _NEWER_SCHEMA_FIELDS or name in _SCHEMA_FIELDS}
    )


SEARCH_ALIASES = {
    "ApplyHiDiffusion": ["hidiffusion", "high res", "highres", "hires", "raunet", "msw-msa", "deep shrink", "upscale"],
    "HiDiffusionInspect": ["hidiffusion", "inspect", "raunet", "msw-msa"],
    "HiDiffusionHiresFix": ["hidiffusion", "hires fix", "highres fix", "upscale", "guided", "demofusion", "4k"],
    "ApplyRAUNet": ["hidiffusion", "raunet", "rau-net", "high res", "deep shrink", "upscale"],
    "ApplyRAUNetSimple": ["hidiffusion", "raunet", "rau-net", "high res", "deep shrink", "upscale"],
    "ApplyMSWMSAAttention": ["hidiffusion", "msw-msa", "mswmsa", "window attention", "high res"],
    "ApplyMSWMSAAttentionSimple": ["hidiffusion", "msw-msa", "mswmsa", "window attention", "high res"],
}
"""Words the node search also finds each node by, where ComfyUI has search aliases (v0.11.0 and newer)."""
MODEL_TYPES = ("auto", "SD15", "SDXL")

TIME_TOOLTIP = (
    "How start_time and end_time are written: percent = sampling percent of the model's noise schedule "
    "(0 = start, 1 = end; not a fraction of steps), timestep = 999 (start) to 0, sigma = raw noise level (high to low)."
)
YAML_TOOLTIP = (
    "Optional YAML mapping that overrides any input by name and sets advanced keys; an unknown key is an "
    "error that lists the valid ones. See the node's docs."
)


def time_mode_parameter() -> Parameter:
    """``time_mode``, as every node with times declares it."""
    return choice("time_mode", "percent", lambda: TIME_MODES, f"one of {', '.join(TIME_MODES)}", TIME_TOOLTIP)


def model_input() -> Any:
    """The model socket of the nodes that patch a model."""
    return io.Model.Input("model", tooltip="Model to patch; the input model itself is never changed.")


def model_type_input() -> Any:
    """The ``model_type`` dropdown of the Simple nodes, always before their preset inputs."""
    return io.Combo.Input(
        "model_type",
        options=list(MODEL_TYPES),
        default="auto",
        tooltip="auto reads the family from the model's structure. SD15 covers SD1.x and SD2.x.",
    )


def yaml_parameters_input(tooltip: str = YAML_TOOLTIP) -> Any:
    """The optional ``yaml_parameters`` text of the advanced nodes, always their last input."""
    return io.String.Input("yaml_parameters", optional=True, multiline=True, default="", tooltip=tooltip, **ADVANCED)


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


class PackNode(io.ComfyNode):
    """One of the pack's nodes, declared by class members; its ``define_schema`` is written once, here.

    A node names its id, display name and output, and lists its inputs in :meth:`node_inputs`,
    a method because some options (the resampling methods ComfyUI-bleh adds) are read when
    ComfyUI asks for the schema. The members are lower case so that they never meet the
    upper-case class properties ComfyUI derives from the schema.
    """

    node_id: ClassVar[str]
    display_name: ClassVar[str]
    output_type: ClassVar[Any] = io.Model
    output_tooltip: ClassVar[str]
    is_output_node: ClassVar[bool] = False

    @classmethod
    def node_inputs(cls) -> list[Any]:
        """The node's inputs, in the order saved workflows hold their widget values."""
        raise NotImplementedError(f"{cls.__name__} lists no inputs")

    @classmethod
    def node_outputs(cls) -> list[Any]:
        """The node's outputs: one ``output_type`` unless a node lists more."""
        return [cls.output_type.Output(tooltip=cls.output_tooltip)]

    @classmethod
    def yaml_keys(cls) -> dict[str, str]:
        """The keys the node's YAML input accepts, each with its one-line description."""
        return {}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            cls,
            node_id=cls.node_id,
            display_name=cls.display_name,
            inputs=cls.node_inputs(),
            outputs=cls.node_outputs(),
            is_output_node=cls.is_output_node,
        )


class SettingsNode(PackNode):
    """An advanced node: the model, one settings module's parameters, and the YAML text.

    The settings module (``raunet_settings``, ``msw_msa_settings``) declares each parameter
    once; inputs, queue-time checks and the settings the node applies all come from it.
    """

    settings_module: ClassVar[ModuleType]
    yaml_tooltip: ClassVar[str] = YAML_TOOLTIP

    @classmethod
    def apply(cls, model: Any, settings: Any) -> Any:
        """The patched clone of ``model`` for these settings."""
        raise NotImplementedError(f"{cls.__name__} applies nothing")

    @classmethod
    def node_inputs(cls) -> list[Any]:
        return [model_input(), *cls.settings_module.PARAMETERS.inputs(), yaml_parameters_input(cls.yaml_tooltip)]

    @classmethod
    def yaml_keys(cls) -> dict[str, str]:
        return cls.settings_module.PARAMETERS.yaml_keys

    @classmethod
    def validate_inputs(cls, **inputs: Any) -> bool | str:
        module = cls.settings_module
        return module.PARAMETERS.queue_check(module.build_settings, inputs)

    @classmethod
    def execute(cls, model: Any, yaml_parameters: str | None = None, **inputs: Any) -> io.NodeOutput:
        return io.NodeOutput(cls.apply(model, cls.settings_module.build_settings(yaml_parameters, **inputs)))
