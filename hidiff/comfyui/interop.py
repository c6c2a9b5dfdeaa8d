"""Other nodes on the blocks RAU-Net rescales: what is found, refused, or warned about.

RAU-Net changes the size of the deep feature maps while it is active. Most other nodes
follow along; a few cannot, and this module finds them before they fail in a way a user
cannot read:

* core Deep Shrink (``PatchModelAddDownscale``) on a block RAU-Net rescales at the same
  time: refused (the factors would multiply); on other blocks: a warning;
* core SAG on a middle block of too few tokens (it guesses the grid from the count), and
  any output block patch that turns a 1x1 middle map into NaN (core FreeU V2 normalises
  by max - min): refused before the first step where the sizes can be foreseen
  (:class:`MiddleBlockCheck`), stopped at the first such call otherwise
  (:class:`MiddleBlockGuard`);
* SUPIR, whose control features are computed at the nominal size: refused;
* another node's handler for the layer class RAU-Net handles: a warning (ComfyUI runs
  only the first handler registered for a class).

Nothing here changes another node's patches; they are only read (and, for the 1x1 check,
called once on a 1x1 probe when RAU-Net would shrink the middle block to a single token).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..core.raunet import downscaled_size, rad_size
from ..core.schedule import SigmaRange
from ..log import logger
from .blocks import format_block_list
from .params import ParameterError
from .patch_base import CONTROLNET, RAUNET, SharedPatch, effect_of
from .run_state import RunState, run_state, sigma_of

DEEP_SHRINK = "PatchModelAddDownscale.execute"
"""``__qualname__`` prefix of core Deep Shrink's patch functions."""
SAG = "SelfAttentionGuidance.execute"
"""``__qualname__`` prefix of core Self-Attention Guidance's attention patch."""
FTE_PATCH = "forward_timestep_embed_patch"


def block_of(options: dict) -> tuple[str, int] | None:
    """The ``(kind, index)`` of the block a call belongs to, from its transformer_options."""
    block = options.get("block")
    return (block[0], int(block[1])) if block is not None else None


# --- Deep Shrink ---------------------------------------------------------------------------------


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


def warn_runtime_conflicts(state: RunState | None, options: dict) -> None:
    """A Deep Shrink added downstream of RAU-Net is only visible while sampling."""
    if state is None:
        return
    for shrink in find_deep_shrink(options.get("patches", {})):
        state.tell_once(
            f"RAU-Net: Deep Shrink (PatchModelAddDownscale) on input block {shrink.block} is active in this run "
            "too; both shrink the deep blocks and their factors compound. Use one of them"
        )


# --- handlers of the layers RAU-Net handles ------------------------------------------------------


def foreign_handler(handlers: list, layer_class: type) -> Any:
    """Another node's ``forward_timestep_embed_patch`` handler that ComfyUI would pick for ``layer_class``."""
    for class_type, handler in handlers:
        if isinstance(class_type, type) and issubclass(layer_class, class_type):
            return None if effect_of(handler) == RAUNET else handler
    return None


def warn_foreign_handler(handlers: list, layer_class: type, part: str) -> None:
    """Warn that ``part`` of RAU-Net will not run: another node already handles ``layer_class`` layers."""
    handler = foreign_handler(handlers, layer_class)
    if handler is not None:
        logger.warning(
            f"RAU-Net: another node already handles {layer_class.__name__} layers ({handler!r}); ComfyUI runs only "
            f"the first handler registered for a class, so {part} will not run on this model. Apply RAU-Net "
            "before that node, or remove it"
        )


# --- SUPIR ---------------------------------------------------------------------------------------


def _supir_class() -> type | None:
    try:
        from comfy.ldm.supir.supir_patch import SUPIRPatch
    except ImportError:  # ComfyUI before SUPIR support (0.3.64)
        return None
    return SUPIRPatch


def has_supir(options: dict) -> bool:
    """Whether core SUPIR's patches are on the model (SUPIR registers bound methods of a SUPIRPatch)."""
    supir = _supir_class()
    if supir is None:
        return False
    for entries in options.get("patches", {}).values():
        for entry in entries:
            patch = entry[1] if isinstance(entry, tuple) else entry
            if isinstance(getattr(patch, "__self__", None), supir):
                return True
    return False


SUPIR_MESSAGE = (
    "RAU-Net cannot be used with SUPIR: SUPIR computes its control features at the image's nominal size and "
    "merges them into every output block, while RAU-Net shrinks the deep blocks. Sample SUPIR without RAU-Net "
    "(MSW-MSA alone works)"
)


def refuse_supir(options: dict) -> None:
    """Raise the SUPIR refusal when SUPIR's patches are on the model."""
    if has_supir(options):
        raise ParameterError(SUPIR_MESSAGE)


# --- a middle block too small for another node ---------------------------------------------------


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


def has_sag(options: dict) -> bool:
    """Whether core SAG's attention patch is on the middle block."""
    replaces = options.get("patches_replace", {}).get("attn1", {})
    return any(
        key[0] == "middle" and getattr(patch, "__qualname__", "").startswith(SAG) for key, patch in replaces.items()
    )


def _patch_name(patch: Any) -> str:
    """A patch's owner as users know it: ``FreeU_V2`` for ``FreeU_V2.execute.<locals>.output_block_patch``."""
    qualname = getattr(patch, "__qualname__", None) or type(patch).__qualname__
    module = getattr(patch, "__module__", None) or type(patch).__module__
    return f"{qualname.split('.')[0]} ({module})"


def nan_on_one_token(options: dict, channels: int) -> str | None:
    """The name of another node's output block patch that turns a 1x1 middle map into NaN, or None.

    Recognised by what it does, not by its name, so core FreeU V2 is found whatever its
    code looks like in a ComfyUI version (a V1 method on 0.3.64, a V3 ``execute`` later),
    and so are copies of it in other packs: each foreign output block patch is called
    once on a 1x1 map of the middle block's ``channels`` with a 1x1 skip, as at output
    block 0. A patch that raises on this probe is left alone.
    """
    for patch in options.get("patches", {}).get("output_block_patch", []):
        if effect_of(patch) is not None:
            continue
        h, hsp = torch.ones(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
        try:
            with torch.no_grad():
                out = patch(h, hsp, {**options, "block": ("output", 0)})
        except Exception:  # noqa: BLE001 (another node's code on a probe: not ours to judge)
            continue
        if isinstance(out, tuple) and isinstance(out[0], torch.Tensor) and torch.isnan(out[0]).any():
            return _patch_name(patch)
    return None


def middle_block_problem(tokens: int, height: int, width: int, channels: int, options: dict) -> str | None:
    """What fails on a middle block of ``tokens`` tokens (``channels`` wide) for a height x width latent, or None.

    ``options`` is the run's transformer_options, where core SAG and FreeU V2 leave their patches.
    """
    # SAG itself skips latents with a side of 4 or less.
    if min(height, width) > 4 and has_sag(options) and not sag_reads_grid(tokens, height, width):
        return (
            f"Self-Attention Guidance (SAG) cannot rebuild its attention map from {tokens} token(s); "
            "use Perturbed-Attention Guidance instead of SAG"
        )
    if tokens == 1:
        culprit = nan_on_one_token(options, channels)
        if culprit is not None:
            return (
                f"{culprit} turns a 1x1 map into NaN, so the image would be NaN (core FreeU V2 does: it "
                "normalises by the map's max - min, which is 0 there); use core FreeU (V1) instead"
            )
    return None


def middle_block_error(height: int, width: int, middle: tuple[int, int], problem: str) -> ParameterError:
    """The error that stops a run whose middle block RAU-Net shrinks too far for another node."""
    return ParameterError(
        f"RAU-Net: on this {height}x{width} latent RAU-Net shrinks the middle block to {middle[0]}x{middle[1]} "
        f"while it is active, and {problem}, a larger image (RAU-Net is meant for sizes above the model's native "
        "one), or RAU-Net without the CA downscale"
    )


class MiddleBlockGuard(SharedPatch):
    """Output block patch for nodes that fail on a tiny middle block.

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

    hidiffusion_effect = RAUNET

    def __init__(self, active: Callable[[float], bool]) -> None:
        self.active = active

    def __repr__(self) -> str:
        return "MiddleBlockGuard()"

    def __call__(
        self, h: torch.Tensor, hsp: torch.Tensor | None, transformer_options: dict
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if block_of(transformer_options) != ("output", 0):
            return h, hsp
        sigma = sigma_of(transformer_options)
        if sigma is None or not self.active(sigma):
            return h, hsp
        height, width = (int(side) for side in transformer_options.get("original_shape", [0, 0])[-2:])
        middle = (h.shape[-2], h.shape[-1])
        state = run_state(transformer_options, RAUNET)
        known = state.memo.setdefault("middle_block_ok", set()) if state is not None else set()
        if middle in known:
            return h, hsp
        problem = middle_block_problem(middle[0] * middle[1], height, width, h.shape[1], transformer_options)
        if problem is None:
            known.add(middle)
            return h, hsp
        raise middle_block_error(height, width, middle, problem)


_SIZE_PATCHES = ("input_block_patch", "input_block_patch_after_skip", FTE_PATCH)
"""Patch lists whose entries run before the middle block and may change the map's size."""

_STEPPING_SAMPLERS = "comfy.k_diffusion.sampling"
"""The module of the stock samplers that run the model at every sigma of the schedule."""


def _middle_channels(guider: Any) -> int | None:
    """The middle block's output channels: those of its last layer that has ``out_channels``."""
    try:
        middle = guider.model_patcher.get_model_object("diffusion_model").middle_block
    except AttributeError:
        return None
    widths = [m.out_channels for m in middle.modules() if isinstance(getattr(m, "out_channels", None), int)]
    return widths[-1] if widths else None


class MiddleBlockCheck(SharedPatch):
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

    It also refuses a run that SUPIR was added to after RAU-Net.
    """

    hidiffusion_effect = RAUNET

    def __init__(
        self,
        downsamples: Iterable[int],
        inputs: int,
        rad: Any,
        ca: Any,
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

    def middle_size(self, height: int, width: int, sigma: float, state: RunState | None = None) -> tuple[int, int]:
        """The middle block's size for a height x width latent at ``sigma`` (RAU-Net's patches only);
        ``state``: the run's, where the CA fadeout's strength at ``sigma`` is kept for the steps."""
        size = (height, width)
        for index in range(self.inputs):
            if index in self.downsamples:
                rad = self.rad is not None and index in self.rad.blocks and self.rad.time.contains(sigma)
                size = (rad_size(size[0]), rad_size(size[1])) if rad else (-(-size[0] // 2), -(-size[1] // 2))
            if self.ca is not None and index in self.ca.blocks and self.ca.time.contains(sigma):
                factor_h, factor_w = self.ca.factors_at(sigma, state)
                size = (downscaled_size(size[0], factor_h), downscaled_size(size[1], factor_w))
        return size

    def exact(self, guider: Any) -> bool:
        """Whether RAU-Net alone sets the sizes up to output block 0 in this run."""
        if 0 in self.ca_restores:
            return False
        patches = guider.model_options.get("transformer_options", {}).get("patches", {})
        for name in _SIZE_PATCHES:
            for entry in patches.get(name, []):
                patch = entry[1] if name == FTE_PATCH else entry
                if effect_of(patch) not in (RAUNET, CONTROLNET):
                    return False
        object_patches = getattr(getattr(guider, "model_patcher", None), "object_patches", {})
        prefixes = ("diffusion_model.input_blocks.", "diffusion_model.middle_block")
        return not any(key.startswith(prefixes) and effect_of(obj) != RAUNET for key, obj in object_patches.items())

    def __call__(self, guider: Any, noise: Any, sampler: Any, state: RunState) -> None:
        options = guider.model_options.get("transformer_options", {})
        refuse_supir(options)
        shape = getattr(noise, "shape", ())
        if len(shape) != 4 or not state.schedule or not self.exact(guider):
            return
        channels = _middle_channels(guider)
        if channels is None:
            return
        height, width = int(shape[-2]), int(shape[-1])
        steps = state.schedule[:-1]
        if getattr(getattr(sampler, "sampler_function", None), "__module__", None) != _STEPPING_SAMPLERS:
            steps = steps[:1]
        sizes = {self.middle_size(height, width, sigma, state) for sigma in steps if sigma > 0 and self.active(sigma)}
        for middle in sorted(sizes):
            problem = middle_block_problem(middle[0] * middle[1], height, width, channels, options)
            if problem is not None:
                raise middle_block_error(height, width, middle, problem)
