"""RAU-Net in ComfyUI: RAD, RAU and the CA downscale through ModelPatcher patches.

* RAD: a ``forward_timestep_embed_patch`` for ``Downsample``. On the chosen input blocks
  while active it runs the layer on ``x[..., ::2, ::2]`` (:mod:`hidiff.core.raunet`);
  everywhere else it hands the call on unchanged.
* RAU: ComfyUI's ``Upsample`` already resizes (nearest) to the exact skip size it is
  given, so ``nearest`` needs no patch. Other methods replace the paired Upsample's
  ``forward`` with an object patch that looks at the sizes only: a map smaller than half
  the skip (RAD ran) is resampled with ``upscale_mode`` to exactly the skip size, then
  goes through the layer's own conv; any other call is the stock forward.
* CA: an ``input_block_patch`` (or ``_after_skip``) shrinks the map after the chosen
  input block while active; an ``output_block_patch`` at the paired output block resizes
  ``h`` to exactly the skip's size whenever the two differ. It keeps no state, so a run
  that fails half-way leaves nothing behind.

Every decision is made per call from the sigma in ``transformer_options`` (read once per
UNet call through the run state). All patch objects are immutable and survive
``ModelPatcher.clone``'s deep copy as themselves. A run whose middle block would end up
too small for core SAG or FreeU V2 is refused before its first step where the sizes can
be foreseen (:class:`MiddleBlockCheck`), and stopped by :class:`MiddleBlockGuard` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import comfy.utils
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample

from ..core.blocks import format_block_list, parse_block_list
from ..core.raunet import (
    CA_DOWNSCALE_METHODS,
    TWO_STAGE_MODES,
    UPSCALE_METHODS,
    ca_downscale,
    downscaled_size,
    faded_factor,
    fadeout_strength,
    is_whole,
    rad_size,
    resize,
    resolution_aware_downsample,
    sigma_to_percent,
    upscale,
)
from ..core.schedule import MAX_TIMESTEP, TIME_MODES, SigmaRange, TimeMode, sigma_range
from ..core.unet_map import UNetMap
from ..log import logger
from .controlnet import DEFAULT_RESIZE_MODE, install_control_bridge, remove_control_bridge
from .controlnet import EFFECT as CONTROL_EFFECT
from .model_info import percent_to_sigma, unet_map_of
from .params import ParameterError, parse_yaml_parameters, require_bool, require_choice, require_number
from .run_state import RunState, install_run_state, run_state, sigma_of

EFFECT = "hidiffusion_raunet"
DEEP_SHRINK = "PatchModelAddDownscale.execute"
"""``__qualname__`` prefix of core Deep Shrink's patch functions."""
SAG = "SelfAttentionGuidance.execute"
"""``__qualname__`` prefix of core Self-Attention Guidance's attention patch."""
FREEU_V2 = "FreeU_V2.patch"
"""``__qualname__`` prefix of core FreeU V2's output block patch."""

_BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")
_FTE_PATCH = "forward_timestep_embed_patch"

DEFAULTS: dict[str, Any] = {
    "input_blocks": "3",
    "output_blocks": "8",
    "time_mode": "percent",
    "start_time": 0.0,
    "end_time": 0.45,
    "upscale_mode": "bicubic",
    "ca_start_time": 0.0,
    "ca_end_time": 0.3,
    "ca_input_blocks": "4",
    "ca_output_blocks": "8",
    "ca_upscale_mode": "bicubic",
    "ca_downscale_mode": "avg_pool2d",
    "ca_downscale_factor": 2.0,
    "two_stage_upscale_mode": "disabled",
    "ca_downscale_factor_w": None,
    "ca_input_after_skip_mode": False,
    "ca_fadeout_start_time": None,
    "ca_fadeout_cap": 0.0,
    "controlnet_resize_mode": DEFAULT_RESIZE_MODE,
    "verbose": False,
}
"""The ApplyRAUNet node's defaults (the seed's for SD1.x, with the official avg_pool2d)."""

YAML_KEYS = {
    "input_blocks": "input Downsample blocks for RAD, e.g. '3' or [3]",
    "output_blocks": "the paired output Upsample blocks for RAU, e.g. '8'",
    "time_mode": f"one of {', '.join(TIME_MODES)}",
    "start_time": "when RAD/RAU start (inclusive)",
    "end_time": "when RAD/RAU end (inclusive)",
    "upscale_mode": f"RAU resampling: {', '.join(UPSCALE_METHODS)}",
    "ca_start_time": "when the CA downscale starts (inclusive)",
    "ca_end_time": "when the CA downscale ends (inclusive)",
    "ca_input_blocks": "input blocks after which the map is shrunk, e.g. '4'",
    "ca_output_blocks": "the paired output blocks that restore it, e.g. '8'",
    "ca_upscale_mode": f"CA restore resampling: {', '.join(UPSCALE_METHODS)}",
    "ca_downscale_mode": f"CA downscale: {', '.join(CA_DOWNSCALE_METHODS)}",
    "ca_downscale_factor": "CA downscale factor, at least 1 (whole numbers for avg_pool2d)",
    "two_stage_upscale_mode": f"first half of the RAU resample: {', '.join(TWO_STAGE_MODES)}",
    "ca_downscale_factor_w": "separate CA factor for the width (default: ca_downscale_factor)",
    "ca_input_after_skip_mode": "true: shrink after the skip is stored (Deep Shrink style; pairs k -> n-1-k)",
    "ca_fadeout_start_time": "time (time_mode units) from which the CA factor fades linearly to 1 at ca_end_time",
    "ca_fadeout_cap": "0-1: the fade never goes below this fraction of the CA effect (default 0)",
    "controlnet_resize_mode": f"how ControlNet/T2I residuals are fitted to shrunk maps: {', '.join(UPSCALE_METHODS)}",
    "verbose": "true to log the settings and, once per run, every resize with its sizes",
}


YAML_ONLY_KEYS = (
    "ca_downscale_factor_w",
    "ca_input_after_skip_mode",
    "ca_fadeout_start_time",
    "ca_fadeout_cap",
    "controlnet_resize_mode",
    "verbose",
)
"""Advanced keys that have no widget."""


@dataclass(frozen=True)
class RauNetSettings:
    """Checked settings of one RAU-Net application, before they meet a model."""

    input_blocks: tuple[int, ...]
    output_blocks: tuple[int, ...]
    time_mode: str
    start_time: float
    end_time: float
    upscale_mode: str
    ca_start_time: float
    ca_end_time: float
    ca_input_blocks: tuple[int, ...]
    ca_output_blocks: tuple[int, ...]
    ca_upscale_mode: str
    ca_downscale_mode: str
    ca_downscale_factor: float
    two_stage_upscale_mode: str = "disabled"
    ca_downscale_factor_w: float | None = None
    ca_input_after_skip_mode: bool = False
    ca_fadeout_start_time: float | None = None
    ca_fadeout_cap: float = 0.0
    controlnet_resize_mode: str = DEFAULT_RESIZE_MODE
    verbose: bool = False

    @property
    def factor_w(self) -> float:
        """The CA width factor (the height factor unless set separately)."""
        return self.ca_downscale_factor if self.ca_downscale_factor_w is None else self.ca_downscale_factor_w


# --- settings ------------------------------------------------------------------------


def build_settings(yaml_parameters: str | None = None, **inputs: Any) -> RauNetSettings:
    """Merge node inputs, defaults and ``yaml_parameters``; check every value.

    Raises :class:`ParameterError` (a ValueError) naming the input and its valid values.
    Block pairs need the model and are checked by :func:`apply_raunet`.
    """
    values = {**DEFAULTS, **inputs, **parse_yaml_parameters(yaml_parameters, YAML_KEYS)}
    mode = require_choice("time_mode", values["time_mode"], TIME_MODES)
    settings = RauNetSettings(
        input_blocks=parse_block_list("input_blocks", values["input_blocks"]),
        output_blocks=parse_block_list("output_blocks", values["output_blocks"]),
        time_mode=mode,
        start_time=require_number("start_time", values["start_time"]),
        end_time=require_number("end_time", values["end_time"]),
        upscale_mode=require_choice("upscale_mode", values["upscale_mode"], UPSCALE_METHODS),
        ca_start_time=require_number("ca_start_time", values["ca_start_time"]),
        ca_end_time=require_number("ca_end_time", values["ca_end_time"]),
        ca_input_blocks=parse_block_list("ca_input_blocks", values["ca_input_blocks"]),
        ca_output_blocks=parse_block_list("ca_output_blocks", values["ca_output_blocks"]),
        ca_upscale_mode=require_choice("ca_upscale_mode", values["ca_upscale_mode"], UPSCALE_METHODS),
        ca_downscale_mode=require_choice("ca_downscale_mode", values["ca_downscale_mode"], CA_DOWNSCALE_METHODS),
        ca_downscale_factor=_factor("ca_downscale_factor", values["ca_downscale_factor"]),
        two_stage_upscale_mode=require_choice(
            "two_stage_upscale_mode", values["two_stage_upscale_mode"], TWO_STAGE_MODES
        ),
        ca_downscale_factor_w=_optional(_factor, "ca_downscale_factor_w", values["ca_downscale_factor_w"]),
        ca_input_after_skip_mode=require_bool("ca_input_after_skip_mode", values["ca_input_after_skip_mode"]),
        ca_fadeout_start_time=_optional(require_number, "ca_fadeout_start_time", values["ca_fadeout_start_time"]),
        ca_fadeout_cap=_fraction("ca_fadeout_cap", values["ca_fadeout_cap"]),
        controlnet_resize_mode=require_choice(
            "controlnet_resize_mode", values["controlnet_resize_mode"], UPSCALE_METHODS
        ),
        verbose=require_bool("verbose", values["verbose"]),
    )
    _check_times(settings)
    _check_pooling(settings)
    return settings


def _optional(check: Any, name: str, value: Any) -> Any:
    return None if value is None else check(name, value)


def _factor(name: str, value: Any) -> float:
    factor = require_number(name, value)
    if not (factor >= 1.0 and math.isfinite(factor)):
        raise ParameterError(
            f"{name} = {value!r} is not valid; it must be at least 1 (1 = no downscale, 2 = half size)"
        )
    return factor


def _fraction(name: str, value: Any) -> float:
    number = require_number(name, value)
    if not 0.0 <= number <= 1.0:
        raise ParameterError(f"{name} = {value!r} is out of range: it must be 0 to 1")
    return number


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


# --- checks against the model ----------------------------------------------------------


def pairs_text(pairs: dict[int, int]) -> str:
    """Pairs as the messages and the README write them: ``3->8, 6->5``."""
    return ", ".join(f"{i}->{o}" for i, o in pairs.items()) or "none"


def check_pairs(
    inputs: tuple[int, ...],
    outputs: tuple[int, ...],
    valid: dict[int, int],
    names: tuple[str, str],
    unet: UNetMap,
    why: str,
) -> dict[int, int]:
    """{input: output} for the chosen blocks, if they form pairs of ``valid``; else an error listing them."""
    in_name, out_name = names
    hint = f"valid input->output pairs for this {unet.describe()}: {pairs_text(valid)}"
    for index in inputs:
        if index >= len(unet.input_blocks):
            raise ParameterError(f"{in_name}: input block {index} does not exist on this model; {hint}")
        if index not in valid:
            raise ParameterError(f"{in_name}: input block {index} {why}; {hint}")
        if valid[index] not in outputs:
            raise ParameterError(
                f"{in_name}: input block {index} pairs with output block {valid[index]}, which is missing from "
                f"{out_name} = '{format_block_list(outputs)}'; {hint}"
            )
    inverse = {o: i for i, o in valid.items()}
    for index in outputs:
        if index not in inverse or inverse[index] not in inputs:
            paired = f"pairs with input block {inverse[index]}" if index in inverse else "pairs with no input block"
            raise ParameterError(
                f"{out_name}: output block {index} {paired}, which is missing from "
                f"{in_name} = '{format_block_list(inputs)}'; {hint}"
            )
    return {i: valid[i] for i in inputs}


def rad_pairs(settings: RauNetSettings, unet: UNetMap) -> dict[int, int]:
    """The Downsample -> Upsample pairs chosen for RAD/RAU, checked against the model."""
    return check_pairs(
        settings.input_blocks,
        settings.output_blocks,
        unet.downsample_pairs(),
        ("input_blocks", "output_blocks"),
        unet,
        "is not a Downsample block on this model (RAD only replaces a Downsample)",
    )


def ca_pairs(settings: RauNetSettings, unet: UNetMap) -> dict[int, int]:
    """The CA shrink -> restore pairs, checked against the model (after-skip pairs differ)."""
    if settings.ca_input_after_skip_mode:
        valid, why = unet.after_skip_pairs(), "has no output block that pops its skip"
    else:
        valid = unet.pool_pairs()
        why = "cannot be shrunk before its skip (it ends in a Downsample, or it is conv_in)"
    return check_pairs(
        settings.ca_input_blocks, settings.ca_output_blocks, valid, ("ca_input_blocks", "ca_output_blocks"), unet, why
    )


# --- the patches -----------------------------------------------------------------------


def _bislerp(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return comfy.utils.bislerp(x, width, height)


def _block_of(options: dict) -> tuple[str, int] | None:
    block = options.get("block")
    return (block[0], int(block[1])) if block is not None else None


def _active_sigma(options: dict, kind: str, blocks: frozenset[int], time: SigmaRange) -> float | None:
    """The call's sigma when it is on one of ``blocks`` of ``kind`` and inside ``time``; else None."""
    block = _block_of(options)
    if block is None or block[0] != kind or block[1] not in blocks:
        return None
    sigma = sigma_of(options, EFFECT)
    return sigma if sigma is not None and time.contains(sigma) else None


def _size(t: torch.Tensor) -> str:
    return f"{t.shape[-2]}x{t.shape[-1]}"


class _Immutable:
    """Shared by every clone of the model: deep copies are the object itself."""

    hidiffusion_effect = EFFECT

    def __deepcopy__(self, memo: dict) -> _Immutable:
        return self


class ResolutionAwareDownsample(_Immutable):
    """The ``Downsample`` handler: RAD on the chosen input blocks while active."""

    def __init__(self, blocks: Iterable[int], time: SigmaRange, verbose: bool) -> None:
        self.blocks = frozenset(blocks)
        self.time = time
        self.verbose = verbose

    def __repr__(self) -> str:
        return f"ResolutionAwareDownsample(blocks={sorted(self.blocks)}, time={self.time})"

    def __call__(
        self, layer: Any, x: torch.Tensor, emb: Any, context: Any, transformer_options: dict, *args: Any
    ) -> Any:
        if _active_sigma(transformer_options, "input", self.blocks, self.time) is None:
            return _pass_on(self, layer, x, emb, context, transformer_options, *args)
        out = resolution_aware_downsample(layer, x)
        state = run_state(transformer_options, EFFECT)
        _warn_runtime_conflicts(state, transformer_options)
        if self.verbose and state is not None:
            state.tell_once(
                f"RAU-Net input block {transformer_options['block'][1]}: RAD {_size(x)} -> {_size(out)}", "info"
            )
        return out


def _pass_on(me: Any, layer: Any, x: torch.Tensor, emb: Any, context: Any, options: dict, *args: Any) -> Any:
    """Run what ComfyUI would run without us: the next matching handler, or the layer."""
    handlers = options.get("patches", {}).get(_FTE_PATCH, [])
    found = False
    for class_type, handler in handlers:
        if handler is me:
            found = True
        elif found and isinstance(layer, class_type):
            return handler(layer, x, emb, context, options, *args)
    return layer(x)


class ResolutionAwareUpsample(_Immutable):
    """Object patch for an ``Upsample.forward``: RAU's resample after RAD, stock otherwise.

    Upsample gets no transformer_options, so the decision is made from the sizes: a map
    smaller than half the skip on a side can only come from RAD (or another shrink
    upstream), and is resampled with ``mode`` to exactly ``output_shape``.
    """

    def __init__(self, layer: Any, mode: str, two_stage_mode: str, fallback: Any = None) -> None:
        self.layer = layer
        self.mode = mode
        self.two_stage_mode = two_stage_mode
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"ResolutionAwareUpsample(mode={self.mode!r}, two_stage_mode={self.two_stage_mode!r})"

    def __call__(self, x: torch.Tensor, output_shape: Any = None) -> torch.Tensor:
        if output_shape is not None and self.after_rad(x, output_shape):
            x = upscale(x, int(output_shape[-2]), int(output_shape[-1]), self.mode, self.two_stage_mode, _bislerp)
            return self.layer.conv(x) if self.layer.use_conv else x
        if self.fallback is not None:
            return self.fallback(x, output_shape=output_shape)
        return type(self.layer).forward(self.layer, x, output_shape=output_shape)

    @staticmethod
    def after_rad(x: torch.Tensor, output_shape: Any) -> bool:
        """Whether ``x`` is smaller than the stock x2 upsample expects, on either side."""
        height, width = int(output_shape[-2]), int(output_shape[-1])
        return x.shape[-2] < -(-height // 2) or x.shape[-1] < -(-width // 2)


@dataclass(frozen=True)
class Fadeout:
    """The CA fadeout in sampling-percent space (see :func:`hidiff.core.raunet.fadeout_strength`)."""

    start_percent: float
    end_percent: float
    cap: float
    percent_to_sigma: Any

    def strength(self, sigma: float) -> float:
        """The fraction of the CA downscale left at ``sigma``."""
        percent = sigma_to_percent(sigma, self.percent_to_sigma)
        return fadeout_strength(percent, self.start_percent, self.end_percent, self.cap)


class CaDownscale(_Immutable):
    """The input block patch that shrinks the map after the chosen blocks while active."""

    def __init__(
        self,
        blocks: Iterable[int],
        time: SigmaRange,
        factors: tuple[float, float],
        mode: str,
        fadeout: Fadeout | None,
        verbose: bool,
    ) -> None:
        self.blocks = frozenset(blocks)
        self.time = time
        self.factors = factors
        self.mode = mode
        self.fadeout = fadeout
        self.verbose = verbose

    def __repr__(self) -> str:
        return (
            f"CaDownscale(blocks={sorted(self.blocks)}, time={self.time}, factors={self.factors}, mode={self.mode!r})"
        )

    def factors_at(self, sigma: float) -> tuple[float, float]:
        """The (height, width) factors of a call at ``sigma`` (moved towards 1 by the fadeout)."""
        factor_h, factor_w = self.factors
        if self.fadeout is not None:
            strength = self.fadeout.strength(sigma)
            factor_h, factor_w = faded_factor(factor_h, strength), faded_factor(factor_w, strength)
        return factor_h, factor_w

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        sigma = _active_sigma(transformer_options, "input", self.blocks, self.time)
        if sigma is None:
            return h
        factor_h, factor_w = self.factors_at(sigma)
        out = ca_downscale(h, factor_h, factor_w, self.mode, _bislerp)
        state = run_state(transformer_options, EFFECT)
        _warn_runtime_conflicts(state, transformer_options)
        if self.verbose and state is not None:
            state.tell_once(
                f"RAU-Net input block {transformer_options['block'][1]}: CA {self.mode} {_size(h)} -> {_size(out)} "
                f"(factor {factor_h:g}x{factor_w:g})",
                "info",
            )
        return out


class CaRestore(_Immutable):
    """The output block patch that brings ``h`` back to the skip's exact size (stateless)."""

    def __init__(self, blocks: Iterable[int], mode: str, verbose: bool) -> None:
        self.blocks = frozenset(blocks)
        self.mode = mode
        self.verbose = verbose

    def __repr__(self) -> str:
        return f"CaRestore(blocks={sorted(self.blocks)}, mode={self.mode!r})"

    def __call__(
        self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        block = _block_of(transformer_options)
        if block is None or block[0] != "output" or block[1] not in self.blocks or h.shape[-2:] == hsp.shape[-2:]:
            return h, hsp
        out = resize(h, hsp.shape[-2], hsp.shape[-1], self.mode, _bislerp)
        state = run_state(transformer_options, EFFECT)
        if self.verbose and state is not None:
            state.tell_once(f"RAU-Net output block {block[1]}: CA {self.mode} {_size(h)} -> {_size(out)}", "info")
        return out, hsp


# --- other effects on the same blocks ---------------------------------------------------


@dataclass(frozen=True)
class DeepShrink:
    """One core Deep Shrink (``PatchModelAddDownscale``) found on a model."""

    block: int
    factor: float
    time: SigmaRange
    after_skip: bool


def find_deep_shrink(patches: dict) -> Iterator[DeepShrink]:
    """Core Deep Shrink input patches, read from their closures (never changed)."""
    for name in ("input_block_patch", "input_block_patch_after_skip"):
        for patch in patches.get(name, []):
            code = getattr(patch, "__code__", None)
            if not getattr(patch, "__qualname__", "").startswith(DEEP_SHRINK) or code is None:
                continue
            try:
                cells = dict(
                    zip(code.co_freevars, (cell.cell_contents for cell in patch.__closure__ or ()), strict=False)
                )
            except ValueError:  # an empty cell: not the Deep Shrink we know
                continue
            if {"block_number", "sigma_start", "sigma_end"} <= cells.keys():
                yield DeepShrink(
                    block=int(cells["block_number"]),
                    factor=float(cells.get("downscale_factor", 0.0)),
                    time=SigmaRange(float(cells["sigma_start"]), float(cells["sigma_end"])),
                    after_skip=name.endswith("after_skip"),
                )


def _overlap(a: SigmaRange, b: SigmaRange) -> bool:
    return not (a.disabled or b.disabled) and max(a.end, b.end) <= min(a.start, b.start)


def check_deep_shrink(patches: dict, owned: dict[str, tuple[Iterable[int], SigmaRange]]) -> None:
    """Refuse a Deep Shrink on a block RAU-Net rescales at the same time; warn if they only compound.

    ``owned`` maps a part name ("RAD", "CA") to its input blocks and time range.
    """
    for shrink in find_deep_shrink(patches):
        where = f"Deep Shrink (PatchModelAddDownscale) on input block {shrink.block} (factor {shrink.factor:g})"
        for part, (blocks, time) in owned.items():
            if not _overlap(shrink.time, time):
                continue
            if shrink.block in set(blocks):
                raise ParameterError(
                    f"RAU-Net: {where} already rescales that block while {part} would act there too; the two "
                    "shrink factors would multiply. Only one effect may own a block: remove one of them, or move "
                    "one to other blocks or to a time range that does not overlap"
                )
            logger.warning(
                f"RAU-Net: {where} is active at the same time as RAU-Net's {part} (input blocks "
                f"{format_block_list(sorted(set(blocks)))}); their downscales compound in the deeper blocks. "
                "Use one of them, or give them time ranges that do not overlap"
            )


def _warn_runtime_conflicts(state: RunState | None, options: dict) -> None:
    """A Deep Shrink added downstream of RAU-Net is only visible while sampling."""
    if state is None:
        return
    for shrink in find_deep_shrink(options.get("patches", {})):
        state.tell_once(
            f"RAU-Net: Deep Shrink (PatchModelAddDownscale) on input block {shrink.block} is active in this run "
            "too; both shrink the deep blocks and their factors compound. Use one of them"
        )


def _warn_foreign_downsample_handler(handlers: list) -> None:
    for class_type, handler in handlers:
        if isinstance(class_type, type) and issubclass(Downsample, class_type) and not _is_own(handler):
            logger.warning(
                f"RAU-Net: another node already handles Downsample layers ({handler!r}); ComfyUI runs only the "
                "first handler registered for a class, so RAD will not run on this model. Apply RAU-Net before "
                "that node, or remove it"
            )


def sag_reads_grid(tokens: int, height: int, width: int) -> bool:
    """Whether core SAG can rebuild a grid from ``tokens`` middle-block tokens for a latent of height x width.

    SAG (``create_blur_map`` in comfy_extras/nodes_sag.py) is not told the middle block's
    size: it searches for a divisor of the token count near the latent's aspect ratio and
    fails with a bare TypeError (or ZeroDivisionError) when the search finds none, which
    is the case below 4 tokens. This is the same search, so RAU-Net can say why first.
    """
    guess = round(math.sqrt((height / width) * tokens))
    for i in range(math.floor(math.sqrt(tokens) / 2)):
        for divisor in (guess + i, max(1, guess - i)):
            if divisor == 0:
                return False
            if tokens % divisor == 0:
                return True
    return False


def _has_sag(options: dict) -> bool:
    replaces = options.get("patches_replace", {}).get("attn1", {})
    return any(
        key[0] == "middle" and getattr(patch, "__qualname__", "").startswith(SAG) for key, patch in replaces.items()
    )


def _has_freeu_v2(options: dict) -> bool:
    patches = options.get("patches", {}).get("output_block_patch", [])
    return any(getattr(patch, "__qualname__", "").startswith(FREEU_V2) for patch in patches)


def middle_block_problem(tokens: int, height: int, width: int, options: dict) -> str | None:
    """What fails on a middle block of ``tokens`` tokens for a height x width latent, or None.

    ``options`` is the run's transformer_options, where core SAG and FreeU V2 leave their patches.
    """
    # SAG itself skips latents with a side of 4 or less.
    if min(height, width) > 4 and _has_sag(options) and not sag_reads_grid(tokens, height, width):
        return (
            f"Self-Attention Guidance (SAG) cannot rebuild its attention map from {tokens} token(s); "
            "use Perturbed-Attention Guidance instead of SAG"
        )
    if tokens == 1 and _has_freeu_v2(options):
        return "FreeU V2 cannot normalise a 1x1 map (the image would be NaN); use FreeU instead of FreeU V2"
    return None


def middle_block_error(height: int, width: int, middle: tuple[int, int], problem: str) -> ParameterError:
    """The error that stops a run whose middle block RAU-Net shrinks too far for another node."""
    return ParameterError(
        f"RAU-Net: on this {height}x{width} latent RAU-Net shrinks the middle block to {middle[0]}x{middle[1]} "
        f"while it is active, and {problem}, a larger image (RAU-Net is meant for sizes above the model's native "
        "one), or RAU-Net without the CA downscale"
    )


class MiddleBlockGuard(_Immutable):
    """Output block patch for two core nodes that fail on a tiny middle block.

    At output block 0, ``h`` is the middle block's output. While RAU-Net is active on a
    small image it can be a few tokens, and then core SAG fails with a bare TypeError
    (it guesses the grid from the token count) and core FreeU V2 silently returns NaN (it
    normalises by max - min of the map, 0 on a 1x1 map). This stops the run first, with
    the sizes and what to do. Both nodes may be added after RAU-Net, so it is checked
    while sampling. Never changes ``h``.

    :class:`MiddleBlockCheck` refuses most such runs before their first step; this guard
    stays for the calls it cannot foresee (another node changing the sizes, a sampler
    that picks its own sigmas, area conditioning).
    """

    def __init__(self, active: Callable[[float], bool]) -> None:
        self.active = active

    def __repr__(self) -> str:
        return "MiddleBlockGuard()"

    def __call__(
        self, h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if _block_of(transformer_options) != ("output", 0):
            return h, hsp
        sigma = sigma_of(transformer_options, EFFECT)
        if sigma is None or not self.active(sigma):
            return h, hsp
        height, width = (int(side) for side in transformer_options.get("original_shape", [0, 0])[-2:])
        problem = middle_block_problem(h.shape[-2] * h.shape[-1], height, width, transformer_options)
        if problem is None:
            return h, hsp
        raise middle_block_error(height, width, (h.shape[-2], h.shape[-1]), problem)


_SIZE_PATCHES = ("input_block_patch", "input_block_patch_after_skip", _FTE_PATCH)
"""Patch lists whose entries run before the middle block and may change the map's size."""


class MiddleBlockCheck(_Immutable):
    """The :class:`MiddleBlockGuard`'s check at the start of a run, before any step.

    RAU-Net's own patches set the middle block's size from the latent size and the sigma
    alone: a Downsample takes a side s to ceil(s / 2), or ceil(s / 4) under RAD, and the
    CA downscale to ceil(s / factor). With the latent (the noise) and the schedule known
    when sampling starts, the size at every step follows, and a run that the guard would
    stop is refused before its first step, with the same message.

    It only speaks where that is exact, and leaves the rest to the guard: not when
    another node patches the input side (Deep Shrink, a foreign Downsample handler or an
    object patch on an input block may change the sizes), nor when the CA downscale is
    restored at output block 0 (the guard then sees the restored map). Stock samplers of
    ``comfy.k_diffusion.sampling`` run the model at every step's sigma, so every step is
    checked; other samplers (dpm_fast, dpm_adaptive, custom ones) may pick their own
    sigmas, so only the first step, where every sampler starts, is checked for them.
    """

    def __init__(
        self,
        downsamples: Iterable[int],
        inputs: int,
        rad: ResolutionAwareDownsample | None,
        ca: CaDownscale | None,
        ca_restores: Iterable[int],
        active: Callable[[float], bool],
    ) -> None:
        self.downsamples = frozenset(downsamples)
        self.inputs = inputs
        self.rad = rad
        self.ca = ca
        self.ca_restores = frozenset(ca_restores)
        self.active = active

    def __repr__(self) -> str:
        return "MiddleBlockCheck()"

    def middle_size(self, height: int, width: int, sigma: float) -> tuple[int, int]:
        """The middle block's size for a height x width latent at ``sigma`` (RAU-Net's patches only)."""
        size = (height, width)
        for index in range(self.inputs):
            if index in self.downsamples:
                rad = self.rad is not None and index in self.rad.blocks and self.rad.time.contains(sigma)
                size = (rad_size(size[0]), rad_size(size[1])) if rad else (-(-size[0] // 2), -(-size[1] // 2))
            if self.ca is not None and index in self.ca.blocks and self.ca.time.contains(sigma):
                factor_h, factor_w = self.ca.factors_at(sigma)
                size = (downscaled_size(size[0], factor_h), downscaled_size(size[1], factor_w))
        return size

    def exact(self, guider: Any) -> bool:
        """Whether RAU-Net alone sets the sizes up to output block 0 in this run."""
        if 0 in self.ca_restores:
            return False
        patches = guider.model_options.get("transformer_options", {}).get("patches", {})
        for name in _SIZE_PATCHES:
            for entry in patches.get(name, []):
                patch = entry[1] if name == _FTE_PATCH else entry
                if getattr(patch, "hidiffusion_effect", None) not in (EFFECT, CONTROL_EFFECT):
                    return False
        object_patches = getattr(getattr(guider, "model_patcher", None), "object_patches", {})
        prefixes = ("diffusion_model.input_blocks.", "diffusion_model.middle_block")
        return not any(key.startswith(prefixes) and not _is_own(obj) for key, obj in object_patches.items())

    def __call__(self, guider: Any, noise: Any, sampler: Any, state: RunState) -> None:
        shape = getattr(noise, "shape", ())
        if len(shape) != 4 or not state.schedule or not self.exact(guider):
            return
        options = guider.model_options.get("transformer_options", {})
        if not (_has_sag(options) or _has_freeu_v2(options)):
            return
        height, width = int(shape[-2]), int(shape[-1])
        steps = state.schedule[:-1]
        if getattr(getattr(sampler, "sampler_function", None), "__module__", None) != _STEPPING_SAMPLERS:
            steps = steps[:1]
        for sigma in steps:
            if sigma <= 0 or not self.active(sigma):
                continue
            middle = self.middle_size(height, width, sigma)
            problem = middle_block_problem(middle[0] * middle[1], height, width, options)
            if problem is not None:
                raise middle_block_error(height, width, middle, problem)


_STEPPING_SAMPLERS = "comfy.k_diffusion.sampling"
"""The module of the stock samplers that run the model at every sigma of the schedule."""


# --- applying --------------------------------------------------------------------------


def _is_own(obj: Any) -> bool:
    return getattr(obj, "hidiffusion_effect", None) == EFFECT


def remove_own_patches(model: Any) -> None:
    """Drop an earlier RAU-Net's patches from a clone, so a later ApplyRAUNet replaces it."""
    patches = model.model_options.setdefault("transformer_options", {}).setdefault("patches", {})
    for name in _BLOCK_PATCHES:
        if name in patches:
            patches[name] = [p for p in patches[name] if not _is_own(p)]
    if _FTE_PATCH in patches:
        patches[_FTE_PATCH] = [entry for entry in patches[_FTE_PATCH] if not _is_own(entry[1])]
    for key, obj in list(model.object_patches.items()):
        if _is_own(obj):
            if obj.fallback is not None:
                model.object_patches[key] = obj.fallback
            else:
                del model.object_patches[key]


def _percent_of(mode: str, value: float, to_sigma: Any) -> float:
    if mode == TimeMode.PERCENT:
        return value
    if mode == TimeMode.TIMESTEP:
        return 1.0 - value / MAX_TIMESTEP
    return sigma_to_percent(value, to_sigma)


def _fadeout(settings: RauNetSettings, to_sigma: Any) -> Fadeout | None:
    if settings.ca_fadeout_start_time is None:
        return None
    mode = settings.time_mode
    return Fadeout(
        start_percent=_percent_of(mode, settings.ca_fadeout_start_time, to_sigma),
        end_percent=_percent_of(mode, settings.ca_end_time, to_sigma),
        cap=settings.ca_fadeout_cap,
        percent_to_sigma=to_sigma,
    )


def _patch_upsample(model: Any, block: int, settings: RauNetSettings) -> None:
    main = model.get_model_object(f"diffusion_model.output_blocks.{block}")
    key = f"diffusion_model.output_blocks.{block}.{len(main) - 1}.forward"
    fallback = model.object_patches.get(key)
    if fallback is not None:
        logger.warning(
            f"RAU-Net: output block {block}'s Upsample already carries an object patch from another node; "
            "RAU-Net calls it whenever RAD has not run"
        )
    layer = model.get_model_object(f"diffusion_model.output_blocks.{block}.{len(main) - 1}")
    model.add_object_patch(
        key, ResolutionAwareUpsample(layer, settings.upscale_mode, settings.two_stage_upscale_mode, fallback)
    )


def apply_raunet(model: Any, settings: RauNetSettings) -> Any:
    """A clone of ``model`` with RAU-Net; ``model`` itself is untouched.

    Block pairs are checked against the model's structure before anything is patched.
    Applying it again to an already patched model replaces the earlier RAU-Net.
    """
    unet = unet_map_of(model)
    if not unet.supported:
        raise ParameterError(
            f"RAU-Net applies to SD1.x, SD2.x and SDXL UNets; this model cannot be patched: {unet.reason}"
        )
    to_sigma = percent_to_sigma(model)
    mode = settings.time_mode
    rad_time = sigma_range(mode, settings.start_time, settings.end_time, to_sigma)
    ca_time = sigma_range(
        mode, settings.ca_start_time, settings.ca_end_time, to_sigma, ("ca_start_time", "ca_end_time")
    )
    rad = _pairs_if_used("RAD/RAU", rad_pairs, settings, unet, rad_time)
    ca = _pairs_if_used("CA", ca_pairs, settings, unet, ca_time)

    patched = model.clone()
    remove_own_patches(patched)
    remove_control_bridge(patched)
    patches = patched.model_options["transformer_options"]["patches"]
    check_deep_shrink(patches, {"RAD": (rad, rad_time), "CA": (ca, ca_time)})
    if rad or ca:
        # Before our own block patches: residuals are added where apply_control adds them.
        active = _ActiveTimes(rad_time if rad else None, ca_time if ca else None)
        install_control_bridge(patched, active, _Resampler(settings.controlnet_resize_mode))
    rad_handler = ca_handler = check = None
    if rad:
        _warn_foreign_downsample_handler(patches.get(_FTE_PATCH, []))
        rad_handler = _install_rad(patched, rad, rad_time, settings)
    if ca:
        ca_handler = _install_ca(patched, ca, ca_time, settings, to_sigma)
    if rad or ca:
        patched.set_model_output_block_patch(MiddleBlockGuard(active))
        downsamples = [b.index for b in unet.input_blocks if b.downsample]
        check = MiddleBlockCheck(downsamples, len(unet.input_blocks), rad_handler, ca_handler, ca.values(), active)
    install_run_state(patched, EFFECT, check)
    _log_result(settings, rad, ca)
    return patched


@dataclass(frozen=True)
class _ActiveTimes:
    """Whether any RAU-Net part is active at a sigma (for the ControlNet bridge)."""

    rad: SigmaRange | None
    ca: SigmaRange | None

    def __call__(self, sigma: float) -> bool:
        return any(time is not None and time.contains(sigma) for time in (self.rad, self.ca))


@dataclass(frozen=True)
class _Resampler:
    """``resize(x, height, width)`` with a fixed method."""

    mode: str

    def __call__(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return resize(x, height, width, self.mode, _bislerp)


def _pairs_if_used(part: str, check: Any, settings: RauNetSettings, unet: UNetMap, time: SigmaRange) -> dict[int, int]:
    """The checked pairs of a part, or {} when it is switched off.

    A wrong pair is an error, except in a part switched off by its start time: an old
    workflow that disabled a part that way still runs, with a warning.
    """
    try:
        pairs = check(settings, unet)
    except ParameterError as error:
        if not time.disabled:
            raise
        logger.warning(f"RAU-Net: {error} ({part} is switched off by its start time, so nothing is patched there)")
        return {}
    return {} if time.disabled else pairs


def _install_rad(
    patched: Any, rad: dict[int, int], time: SigmaRange, settings: RauNetSettings
) -> ResolutionAwareDownsample:
    handler = ResolutionAwareDownsample(rad, time, settings.verbose)
    patched.set_model_forward_timestep_embed_patch((Downsample, handler))
    if settings.upscale_mode != "nearest" or settings.two_stage_upscale_mode != "disabled":
        for block in rad.values():
            _patch_upsample(patched, block, settings)
    return handler


def _install_ca(
    patched: Any, ca: dict[int, int], time: SigmaRange, settings: RauNetSettings, to_sigma: Any
) -> CaDownscale:
    factors = (settings.ca_downscale_factor, settings.factor_w)
    down = CaDownscale(ca, time, factors, settings.ca_downscale_mode, _fadeout(settings, to_sigma), settings.verbose)
    if settings.ca_input_after_skip_mode:
        patched.set_model_input_block_patch_after_skip(down)
    else:
        patched.set_model_input_block_patch(down)
    patched.set_model_output_block_patch(CaRestore(ca.values(), settings.ca_upscale_mode, settings.verbose))
    return down


def _log_result(settings: RauNetSettings, rad: dict[int, int], ca: dict[int, int]) -> None:
    if not rad and not ca:
        logger.info("RAU-Net: every part is switched off (no blocks, or starts at the end of sampling)")
    elif settings.verbose:
        logger.info(f"RAU-Net: RAD/RAU pairs {pairs_text(rad)}, CA pairs {pairs_text(ca)}; {settings}")
