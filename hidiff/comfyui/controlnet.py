"""ControlNet / T2I-Adapter residuals that follow RAU-Net's feature maps.

ControlNets compute their residuals at the nominal resolution. While RAU-Net shrinks the
deep feature maps, stock ComfyUI cannot add them (``apply_control`` logs "control could
not be applied" and drops them). Instead of replacing ``apply_control`` for the whole
process, as earlier ports did, this module uses two official extension points on the
patched clone only:

* a ``DIFFUSION_MODEL`` wrapper that, on calls where RAU-Net is active, moves the residual
  lists into a private ``transformer_options`` key and hands the UNet lists of ``None`` of
  the same length (so ``apply_control`` pops nothing to add);
* block patches that add each residual at the very place ``apply_control`` would have,
  resized to the actual feature map when the sizes differ. They run ahead of every other
  node's patches of their list, as ``apply_control`` does. The middle residual goes in a
  ``middle_block_after_patch`` where ComfyUI has that patch point (it runs right after
  ``apply_control(h, control, "middle")``), else at output block 0 before anything else.

On calls where RAU-Net is inactive nothing is moved and ComfyUI adds the residuals
itself, so the result is bit-identical to stock ComfyUI.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from comfy.model_patcher import ModelPatcher
from comfy.patcher_extension import WrappersMP

from .patch_base import CONTROLNET, SharedPatch, effect_of, put_first
from .run_state import install_run_state, run_state, sigma_of

EFFECT = CONTROLNET
STASH_KEY = "hidiffusion_control_stash"
DISABLE_ENV = ("JANKHIDIFFUSION_DISABLE_CONTROLNET_WORKAROUND", "JANKHIDIFFUSION_NO_CONTROLNET_WORKAROUND")


MIDDLE_PATCH = "middle_block_after_patch"


def has_middle_block_patch() -> bool:
    """Whether this ComfyUI has the ``middle_block_after_patch`` point (v0.20.0 and newer)."""
    return hasattr(ModelPatcher, "set_model_middle_block_after_patch")


def bridge_disabled() -> bool:
    """Whether the user switched the residual resizing off with the seed pack's variables."""
    return any(os.environ.get(name) for name in DISABLE_ENV)


class ControlStash:
    """The residuals of one UNet call, consumed in the order ``apply_control`` would pop them."""

    def __init__(self, control: dict[str, list[torch.Tensor | None]], resize: Callable[..., torch.Tensor]) -> None:
        self.lists = {name: list(values) for name, values in control.items() if isinstance(values, list)}
        self.resize = resize

    def add(self, name: str, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """Pop the next residual of ``name`` and add it to ``h``, resized if needed."""
        values = self.lists.get(name)
        if not values:
            return h
        residual = values.pop()
        if residual is None:
            return h
        if residual.shape[-2:] != h.shape[-2:]:
            state = run_state(transformer_options, EFFECT)
            if state is not None:
                state.tell_once(
                    f"Scaling controlnet conditioning: {residual.shape[-2:]} -> {h.shape[-2:]}", level="info"
                )
            residual = self.resize(residual, h.shape[-2], h.shape[-1])
        return h + residual.to(h.dtype)

    def drop(self, name: str, transformer_options: dict) -> None:
        """Pop the next residual of ``name`` without adding it (its map is gone)."""
        values = self.lists.get(name)
        if values and values.pop() is not None:
            state = run_state(transformer_options, EFFECT)
            if state is not None:
                state.tell_once(
                    f"ControlNet: another node's output block patch merged the skip connection itself (hsp=None) "
                    f"at {transformer_options.get('block')}; the {name} residual there is dropped"
                )


class ControlWrapper(SharedPatch):
    """``DIFFUSION_MODEL`` wrapper: stash the residuals while RAU-Net is active at this sigma."""

    hidiffusion_effect = EFFECT

    def __init__(self, is_active: Callable[[float], bool], resize: Callable[..., torch.Tensor]) -> None:
        self.is_active = is_active
        self.resize = resize

    def __call__(
        self,
        executor: Any,
        x: torch.Tensor,
        timesteps: Any,
        context: Any,
        y: Any,
        control: Any,
        transformer_options: dict,
        **kwargs: Any,
    ) -> Any:
        if not control:
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        sigma = sigma_of(transformer_options)
        if sigma is None or not self.is_active(sigma):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        stash = ControlStash(control, self.resize)
        blank = {name: [None] * len(values) for name, values in stash.lists.items()}
        transformer_options[STASH_KEY] = stash
        try:
            return executor(x, timesteps, context, y, blank, transformer_options, **kwargs)
        finally:
            transformer_options.pop(STASH_KEY, None)


def _stash(transformer_options: dict) -> ControlStash | None:
    stash = transformer_options.get(STASH_KEY)
    return stash if isinstance(stash, ControlStash) else None


class ControlInputPatch(SharedPatch):
    """``input_block_patch``: T2I-Adapter "input" residuals, before any pooling."""

    hidiffusion_effect = EFFECT

    def __call__(self, h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        stash = _stash(transformer_options)
        return h if stash is None else stash.add("input", h, transformer_options)


class ControlMiddlePatch(SharedPatch):
    """``middle_block_after_patch``: the "middle" residual, added to the middle block's output."""

    hidiffusion_effect = EFFECT

    def __call__(self, args: dict) -> dict:
        stash = _stash(args["transformer_options"])
        if stash is None:
            return args
        return {**args, "h": stash.add("middle", args["h"], args["transformer_options"])}


class ControlOutputPatch(SharedPatch):
    """``output_block_patch``: one "output" residual per block, added to the skip, and, on
    versions without ``middle_block_after_patch``, the "middle" residual at output 0 (where
    ``h`` is the middle block's output).

    Another node's output patch may hand on ``hsp=None`` (SUPIR merges the skip itself);
    the residual is then dropped, as it has nowhere to go, and the run is told once.
    """

    hidiffusion_effect = EFFECT

    def __init__(self, middle: bool) -> None:
        self.middle = middle

    def __call__(
        self, h: torch.Tensor, hsp: torch.Tensor | None, transformer_options: dict
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        stash = _stash(transformer_options)
        if stash is None:
            return h, hsp
        if self.middle and transformer_options.get("block", ("output", -1))[1] == 0:
            h = stash.add("middle", h, transformer_options)
        if hsp is None:
            stash.drop("output", transformer_options)
            return h, hsp
        return h, stash.add("output", hsp, transformer_options)


def remove_control_bridge(model: Any) -> None:
    """Drop the wrapper and patches of an earlier bridge from a cloned patcher."""
    model.remove_wrappers_with_key(WrappersMP.DIFFUSION_MODEL, EFFECT)
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    for name in ("input_block_patch", "output_block_patch", MIDDLE_PATCH):
        if name in patches:
            patches[name] = [p for p in patches[name] if effect_of(p) != EFFECT]


def install_control_bridge(model: Any, is_active: Callable[[float], bool], resize: Callable[..., torch.Tensor]) -> bool:
    """Register the wrapper and patches on a cloned patcher; returns False when disabled.

    The patches go ahead of every patch already in their lists, so residuals are added
    before any pooling or other node's patch, exactly where ``apply_control`` adds them.
    """
    remove_control_bridge(model)
    if bridge_disabled():
        return False
    install_run_state(model, EFFECT)  # first: the pack's sigma wrapper goes outside the bridge's
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, EFFECT, ControlWrapper(is_active, resize))
    put_first(model, "input_block_patch", ControlInputPatch())
    middle_patch_point = has_middle_block_patch()
    if middle_patch_point:
        put_first(model, MIDDLE_PATCH, ControlMiddlePatch())
    put_first(model, "output_block_patch", ControlOutputPatch(middle=not middle_patch_point))
    return True
