"""RAU-Net in ComfyUI: RAD, RAU and the CA downscale through ModelPatcher patches.

* RAD: a ``forward_timestep_embed_patch`` for ``Downsample``. On the chosen input blocks
  while active it runs the layer on ``x[..., ::2, ::2]`` (:mod:`hidiff.core.raunet`);
  everywhere else it hands the call on unchanged.
* RAU: ComfyUI's ``Upsample`` already resizes (nearest) to the exact skip size it is
  given, so ``nearest`` needs no patch. Other methods act on the paired Upsample layers
  and look at the sizes only: a map smaller than half the skip (RAD ran) is resampled
  with ``upscale_mode`` to exactly the skip size, then goes through the layer's own conv;
  any other call is the stock one. Where ComfyUI hands every layer to
  ``forward_timestep_embed_patch`` (v0.20.0 and newer) this is an ``(Upsample, handler)``
  patch like RAD's. On older versions (0.3.64) it is an object patch on the layer's
  ``forward`` that holds no layer: it finds its layer in the UNet that is running, which
  a ``DIFFUSION_MODEL`` wrapper names for the length of each call, so a patcher that
  copies the object patches onto other modules (multi-GPU clones) gets its own weights.
* CA: an ``input_block_patch`` (or ``_after_skip``) shrinks the map after the chosen
  input block while active; an ``output_block_patch`` at the paired output block resizes
  ``h`` to exactly the skip's size whenever the two differ. It keeps no state, so a run
  that fails half-way leaves nothing behind.

Every decision is made per call from the sigma in ``transformer_options`` (read once per
UNet call through the run state). All patch objects are immutable and survive
``ModelPatcher.clone``'s deep copy as themselves. Other nodes RAU-Net must refuse or warn
about are found by :mod:`hidiff.comfyui.interop`.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, Upsample, forward_timestep_embed
from comfy.patcher_extension import WrappersMP

from ..core.raunet import (
    ca_downscale,
    faded_factor,
    fadeout_strength,
    resize,
    resolution_aware_downsample,
    sigma_to_percent,
    upscale,
)
from ..core.schedule import MAX_TIMESTEP, SigmaRange, TimeMode, sigma_range
from ..core.settings import RauNetSettings
from ..core.unet_map import UNetMap
from ..log import logger
from .blocks import format_block_list
from .controlnet import install_control_bridge, remove_control_bridge
from .interop import (
    FTE_PATCH,
    MiddleBlockCheck,
    MiddleBlockGuard,
    block_of,
    check_deep_shrink,
    refuse_supir,
    warn_foreign_handler,
    warn_runtime_conflicts,
)
from .model_info import percent_to_sigma, unet_map_of
from .params import ParameterError
from .patch_base import RAUNET, SharedPatch, effect_of
from .resampling import CallResampler
from .run_state import OPTIONS_ARG, RunState, install_run_state, run_state, sigma_of

EFFECT = RAUNET

_BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")

# --- checks against the model ----------------------------------------------------------


def pairs_text(pairs: dict[int, int]) -> str:
    """Pairs as the messages and the node docs write them: ``3->8, 6->5``."""
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


def _active_sigma(options: dict, kind: str, blocks: frozenset[int], time: SigmaRange) -> float | None:
    """The call's sigma when it is on one of ``blocks`` of ``kind`` and inside ``time``; else None."""
    block = block_of(options)
    if block is None or block[0] != kind or block[1] not in blocks:
        return None
    sigma = sigma_of(options)
    return sigma if sigma is not None and time.contains(sigma) else None


def _size(t: torch.Tensor) -> str:
    return f"{t.shape[-2]}x{t.shape[-1]}"


class _Patch(SharedPatch):
    hidiffusion_effect = EFFECT


class ResolutionAwareDownsample(_Patch):
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
        warn_runtime_conflicts(state, transformer_options)
        if self.verbose and state is not None:
            state.tell_once(
                f"RAU-Net input block {transformer_options['block'][1]}: RAD {_size(x)} -> {_size(out)}", "info"
            )
        return out


def _pass_on(me: Any, layer: Any, x: torch.Tensor, emb: Any, context: Any, options: dict, *args: Any) -> Any:
    """Run what ComfyUI would run without us: the next matching handler, or the layer.

    ``args`` are the handler's remaining arguments, ``output_shape`` first.
    """
    handlers = options.get("patches", {}).get(FTE_PATCH, [])
    found = False
    for class_type, handler in handlers:
        if handler is me:
            found = True
        elif found and isinstance(layer, class_type):
            return handler(layer, x, emb, context, options, *args)
    if isinstance(layer, Upsample):
        return layer(x, output_shape=args[0] if args else None)
    return layer(x)


class ResolutionAwareUpsample(_Patch):
    """The ``Upsample`` handler: RAU's resample after RAD on the paired output blocks, stock otherwise.

    The decision is made from the sizes, as ComfyUI's Upsample is told only the size to
    reach: a map smaller than half the skip on a side can only come from RAD (or another
    shrink upstream), and is resampled with ``mode`` to exactly ``output_shape``, then
    goes through the layer's own conv.
    """

    def __init__(self, blocks: Iterable[int], mode: str, two_stage_mode: str) -> None:
        self.blocks = frozenset(blocks)
        self.mode = mode
        self.two_stage_mode = two_stage_mode

    def __repr__(self) -> str:
        return (
            f"ResolutionAwareUpsample(blocks={sorted(self.blocks)}, mode={self.mode!r}, "
            f"two_stage_mode={self.two_stage_mode!r})"
        )

    def __call__(
        self, layer: Any, x: torch.Tensor, emb: Any, context: Any, transformer_options: dict, *args: Any
    ) -> Any:
        block = block_of(transformer_options)
        output_shape = args[0] if args else None
        if block is not None and block[0] == "output" and block[1] in self.blocks and self.applies(x, output_shape):
            return self.resample(layer, x, output_shape, transformer_options)
        return _pass_on(self, layer, x, emb, context, transformer_options, *args)

    def applies(self, x: torch.Tensor, output_shape: Any) -> bool:
        """Whether a call of the paired Upsample comes after RAD (smaller than the stock x2 expects)."""
        if output_shape is None:
            return False
        height, width = int(output_shape[-2]), int(output_shape[-1])
        return x.shape[-2] < -(-height // 2) or x.shape[-1] < -(-width // 2)

    def resample(self, layer: Any, x: torch.Tensor, output_shape: Any, options: dict) -> torch.Tensor:
        """RAU: ``x`` resampled to exactly ``output_shape`` with ``mode``, then the layer's own conv."""
        host = CallResampler(options, EFFECT)
        x = upscale(x, int(output_shape[-2]), int(output_shape[-1]), self.mode, self.two_stage_mode, host)
        return layer.conv(x) if layer.use_conv else x


@functools.cache
def upsample_handlers_supported() -> bool:
    """Whether this ComfyUI hands ``Upsample`` layers to ``forward_timestep_embed_patch`` handlers.

    Found by trying it: v0.20.0 and newer consult the handlers first for every layer;
    0.3.64 only for layers of no known kind, which excludes Upsample.
    """
    seen: list[Any] = []

    def probe(layer: Any, x: torch.Tensor, *args: Any) -> torch.Tensor:
        seen.append(layer)
        return x

    options = {"patches": {FTE_PATCH: [(Upsample, probe)]}}
    forward_timestep_embed([Upsample(1, False)], torch.zeros(1, 1, 1, 1), None, transformer_options=options)
    return bool(seen)


_RUNNING_UNET: contextvars.ContextVar[Any] = contextvars.ContextVar("hidiffusion_running_unet", default=None)
"""The UNet (``diffusion_model``) whose forward is running in this thread, named by :class:`RunningUNet`."""
_RUNNING_OPTIONS: contextvars.ContextVar[dict] = contextvars.ContextVar("hidiffusion_running_options", default={})  # noqa: B039 (never changed)
"""That call's ``transformer_options`` (the UNet sets ``block`` in this same dict as it goes)."""


class RunningUNet(_Patch):
    """``DIFFUSION_MODEL`` wrapper: names the running UNet and its options for :class:`UpsampleForward`."""

    def __repr__(self) -> str:
        return "RunningUNet()"

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = kwargs.get("transformer_options", args[OPTIONS_ARG] if len(args) > OPTIONS_ARG else {})
        token = _RUNNING_UNET.set(executor.class_obj)
        options_token = _RUNNING_OPTIONS.set(options if isinstance(options, dict) else {})
        try:
            return executor(*args, **kwargs)
        finally:
            _RUNNING_OPTIONS.reset(options_token)
            _RUNNING_UNET.reset(token)


class UpsampleForward(_Patch):
    """Object patch for a paired ``Upsample.forward``, where handlers cannot reach Upsample (0.3.64).

    It holds the layer's path, not the layer: ComfyUI may copy object patches onto a
    patcher around other modules (multi-GPU clones), and each must use its own weights.
    The layer is looked up in the UNet that is running.

    Args:
        path: the layer's path inside ``diffusion_model``, e.g. ``output_blocks.8.2``.
        rau: the RAU decision and resample.
        fallback: another node's object patch on the same ``forward``, run whenever RAD has not.
    """

    def __init__(self, path: str, rau: ResolutionAwareUpsample, fallback: Any = None) -> None:
        self.path = path
        self.rau = rau
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"UpsampleForward({self.path!r}, {self.rau!r})"

    def __call__(self, x: torch.Tensor, output_shape: Any = None) -> torch.Tensor:
        if self.fallback is not None and not self.rau.applies(x, output_shape):
            return self.fallback(x, output_shape=output_shape)
        layer = self.layer()
        if self.rau.applies(x, output_shape):
            return self.rau.resample(layer, x, output_shape, _RUNNING_OPTIONS.get())
        return type(layer).forward(layer, x, output_shape=output_shape)

    def layer(self) -> Any:
        """The layer this patch is set on, in the running UNet."""
        unet = _RUNNING_UNET.get()
        layer = None if unet is None else unet.get_submodule(self.path)
        if layer is None or layer.__dict__.get("forward") is not self:
            raise RuntimeError(
                f"RAU-Net: the Upsample at diffusion_model.{self.path} was called outside a UNet call of the model "
                "RAU-Net patched, so its weights cannot be found"
            )
        return layer


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


class CaDownscale(_Patch):
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

    def factors_at(self, sigma: float, state: RunState | None = None) -> tuple[float, float]:
        """The (height, width) factors of a call at ``sigma`` (moved towards 1 by the fadeout).

        The fadeout's strength is worked out once per sigma of the run (``state``); without
        a run (a call outside a sampler) for the call.
        """
        factor_h, factor_w = self.factors
        if self.fadeout is not None:
            if state is None:
                strength = self.fadeout.strength(sigma)
            else:
                strength = state.per_sigma("ca_fadeout", sigma, self.fadeout.strength)
            factor_h, factor_w = faded_factor(factor_h, strength), faded_factor(factor_w, strength)
        return factor_h, factor_w

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        sigma = _active_sigma(transformer_options, "input", self.blocks, self.time)
        if sigma is None:
            return h
        state = run_state(transformer_options, EFFECT)
        factor_h, factor_w = self.factors_at(sigma, state)
        out = ca_downscale(h, factor_h, factor_w, self.mode, CallResampler(transformer_options, EFFECT))
        warn_runtime_conflicts(state, transformer_options)
        if self.verbose and state is not None:
            state.tell_once(
                f"RAU-Net input block {transformer_options['block'][1]}: CA {self.mode} {_size(h)} -> {_size(out)} "
                f"(factor {factor_h:g}x{factor_w:g})",
                "info",
            )
        return out


class CaRestore(_Patch):
    """The output block patch that brings ``h`` back to the skip's exact size (stateless)."""

    def __init__(self, blocks: Iterable[int], mode: str, verbose: bool) -> None:
        self.blocks = frozenset(blocks)
        self.mode = mode
        self.verbose = verbose

    def __repr__(self) -> str:
        return f"CaRestore(blocks={sorted(self.blocks)}, mode={self.mode!r})"

    def __call__(
        self, h: torch.Tensor, hsp: torch.Tensor | None, transformer_options: dict
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        block = block_of(transformer_options)
        if block is None or block[0] != "output" or block[1] not in self.blocks:
            return h, hsp
        if hsp is None or h.shape[-2:] == hsp.shape[-2:]:  # None: another node merged the skip itself
            return h, hsp
        out = resize(h, hsp.shape[-2], hsp.shape[-1], self.mode, CallResampler(transformer_options, EFFECT))
        state = run_state(transformer_options, EFFECT)
        if self.verbose and state is not None:
            state.tell_once(f"RAU-Net output block {block[1]}: CA {self.mode} {_size(h)} -> {_size(out)}", "info")
        return out, hsp


# --- applying --------------------------------------------------------------------------


def _is_own(obj: Any) -> bool:
    return effect_of(obj) == EFFECT


def remove_own_patches(model: Any) -> None:
    """Drop an earlier RAU-Net's patches from a clone, so a later ApplyRAUNet replaces it."""
    patches = model.model_options.setdefault("transformer_options", {}).setdefault("patches", {})
    for name in _BLOCK_PATCHES:
        if name in patches:
            patches[name] = [p for p in patches[name] if not _is_own(p)]
    if FTE_PATCH in patches:
        patches[FTE_PATCH] = [entry for entry in patches[FTE_PATCH] if not _is_own(entry[1])]
    model.remove_wrappers_with_key(WrappersMP.DIFFUSION_MODEL, EFFECT)
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


def _install_rau(patched: Any, rad: dict[int, int], settings: RauNetSettings) -> None:
    """RAU's resampling on the paired Upsample layers (none needed for the stock nearest)."""
    if settings.upscale_mode == "nearest" and settings.two_stage_upscale_mode == "disabled":
        return
    rau = ResolutionAwareUpsample(rad.values(), settings.upscale_mode, settings.two_stage_upscale_mode)
    layers = {block: _upsample_path(patched, block) for block in rau.blocks}
    for block, path in layers.items():
        if f"diffusion_model.{path}.forward" in patched.object_patches:
            logger.warning(
                f"RAU-Net: output block {block}'s Upsample already carries an object patch from another node; "
                "RAU-Net calls it whenever RAD has not run"
            )
    if upsample_handlers_supported():
        handlers = patched.model_options["transformer_options"]["patches"].get(FTE_PATCH, [])
        warn_foreign_handler(handlers, Upsample, "RAU's resampling")
        patched.set_model_forward_timestep_embed_patch((Upsample, rau))
        return
    patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, EFFECT, RunningUNet())
    for path in layers.values():
        key = f"diffusion_model.{path}.forward"
        patched.add_object_patch(key, UpsampleForward(path, rau, patched.object_patches.get(key)))


def _upsample_path(model: Any, block: int) -> str:
    main = model.get_model_object(f"diffusion_model.output_blocks.{block}")
    return f"output_blocks.{block}.{len(main) - 1}"


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
    if rad or ca:
        refuse_supir(patched.model_options["transformer_options"])
    check_deep_shrink(patches, {"RAD": (rad, rad_time), "CA": (ca, ca_time)})
    if rad or ca:
        # Before our own block patches: residuals are added where apply_control adds them.
        active = _ActiveTimes(rad_time if rad else None, ca_time if ca else None)
        install_control_bridge(patched, active, _Resampler(settings.controlnet_resize_mode))
    rad_handler = ca_handler = check = None
    if rad:
        warn_foreign_handler(patches.get(FTE_PATCH, []), Downsample, "RAD")
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
        return resize(x, height, width, self.mode, CallResampler({}, EFFECT))


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
    _install_rau(patched, rad, settings)
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
