"""FAM's attention modulation in ComfyUI (:mod:`hidiff.core.attention_modulation`).

Two pieces on the Hires Fix node's clone:

* an ``APPLY_MODEL`` wrapper (:class:`NativeMaps`): on a call at the upscaled size it
  first runs the same model at the native size on the reference diffused to the call's
  sigma, with a capture patch that keeps each chosen block's self-attention q and k (and
  none of the pack's HiDiffusion patches: the native call is what an unpatched native
  sampler would run); then it runs the real call with those maps in its options;
* an attn1 replace patch per chosen block (:class:`ModulatedAttention`) that blends the
  native maps into the block's own attention (after any attention replacement that was
  there first, MSW-MSA's included).

A call at another size, or one with inputs the native call cannot be given (an
inpainting model's concat channels, a batch the reference does not divide), runs
unmodulated and the run is told once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import torch
from comfy.patcher_extension import WrappersMP

from ..core.attention_modulation import modulate, noised_reference
from ..core.unet_map import UNetMap
from ..log import logger
from .patch_base import MODULATION, SharedPatch, effect_of
from .run_state import guide_call_options, install_run_state, run_state

EFFECT = MODULATION
MAPS_KEY = "hidiffusion_native_maps"
"""The ``transformer_options`` key of one call's captured native q and k, by block."""


def _attention(extra_options: dict) -> Any:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return comfy_attention.optimized_attention(
            q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision")
        )

    return attention


def _block_key(extra_options: dict) -> tuple[str, int, int] | None:
    block = extra_options.get("block")
    return None if block is None else (block[0], block[1], extra_options.get("block_index", 0))


def _grid(extra_options: dict) -> tuple[int, int] | None:
    shape = extra_options.get("activations_shape")
    return None if shape is None or len(shape) != 4 else (int(shape[-2]), int(shape[-1]))


class CaptureNative:
    """The native call's attn1 replacement: stock attention, keeping q, k and the token grid.

    Made per call and put in that call's options only (never on a model), so it carries no
    effect tag: the native-size gate, which strips the pack's patches, leaves it in place.
    """

    def __init__(self, store: dict) -> None:
        self.store = store

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        key, grid = _block_key(extra_options), _grid(extra_options)
        if key is not None and grid is not None and q.shape[1] == grid[0] * grid[1] == k.shape[1]:
            self.store[key] = (q, k, grid)
        return _attention(extra_options)(q, k, v)


class ModulatedAttention(SharedPatch):
    """The large call's attn1 replacement at one block: its own attention (or the replacement
    that was there first), blended with the native map's output when the call has one."""

    hidiffusion_effect = EFFECT

    def __init__(self, weight: float, inner: Any = None) -> None:
        self.weight = weight
        self.inner = inner

    def __repr__(self) -> str:
        return f"ModulatedAttention(weight={self.weight:g}, inner={self.inner!r})"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        own = self.inner(q, k, v, extra_options) if self.inner is not None else _attention(extra_options)(q, k, v)
        maps, key, grid = extra_options.get(MAPS_KEY), _block_key(extra_options), _grid(extra_options)
        captured = None if maps is None or key is None else maps.get(key)
        if captured is None or grid is None:
            return own
        q_native, k_native, native_grid = captured
        if q_native.shape[0] != q.shape[0] or q.shape[1] != grid[0] * grid[1] or v.shape[1] != q.shape[1]:
            return own
        return modulate(own, q_native, k_native, v, native_grid, grid, self.weight, _attention(extra_options))


class NativeMaps(SharedPatch):
    """The ``APPLY_MODEL`` wrapper: a native-size call on the diffused reference before each
    call at the upscaled size, its self-attention q and k handed to the real call.

    Args:
        reference: the native latent (R, C, h, w) in the model's raw latent space; kept.
        size: (height, width) of the upscaled latent the large calls sample.
        blocks: the (kind, index) blocks whose attention is modulated.
    """

    hidiffusion_effect = EFFECT

    def __init__(self, reference: torch.Tensor, size: tuple[int, int], blocks: Iterable[tuple[str, int]]) -> None:
        self.reference = reference.detach().clone()
        self.size = tuple(size)
        self.blocks = tuple(blocks)

    def __repr__(self) -> str:
        return f"NativeMaps(reference={tuple(self.reference.shape)}, size={self.size}, blocks={self.blocks})"

    def __call__(self, executor: Any, x: torch.Tensor, t: torch.Tensor, c_concat: Any, c_crossattn: Any,
                 control: Any, transformer_options: dict, **kwargs: Any) -> Any:  # fmt: skip
        problem = self.problem_with(x, c_concat)
        if problem is not None:
            if problem:
                state = run_state(transformer_options, EFFECT)
                message = f"HiDiffusion Hires Fix: {problem}; that call runs without attention modulation"
                state.tell_once(message) if state is not None else logger.debug(message)
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        store: dict = {}
        native_x = self.native_input(executor.class_obj, x, t, transformer_options)
        executor(native_x, t, None, c_crossattn, None, self.capture_options(transformer_options, store), **kwargs)
        options = {**transformer_options, MAPS_KEY: store}
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def problem_with(self, x: torch.Tensor, c_concat: Any) -> str | None:
        """Why a call cannot be modulated ('' for a call at another size: the native pass of a
        shared model, told by the lock already), or None."""
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.size:
            return ""
        if c_concat is not None:
            return "the model takes concatenated channels (an inpainting model)"
        if x.shape[0] % self.reference.shape[0]:
            return f"a batch of {x.shape[0]} does not fit the {self.reference.shape[0]} reference latents"
        return None

    def native_input(self, base_model: Any, x: torch.Tensor, t: torch.Tensor, options: dict) -> torch.Tensor:
        """The reference in the sampler's space, diffused to ``t`` with the fixed noise, at x's batch."""
        state = run_state(options, EFFECT)
        memo = state.memo if state is not None else {}
        key = ("native_reference", x.device)
        if key not in memo:
            memo[key] = base_model.process_latent_in(self.reference.to(x.device, torch.float32))
        return noised_reference(memo[key], t, x.shape[0]).to(x.dtype)

    def capture_options(self, options: dict, store: dict) -> dict:
        """The native call's options: none of the pack's patches, the capture patch on the blocks."""
        stripped = guide_call_options(options)
        replaces = dict(stripped.get("patches_replace", {}))
        attn1 = dict(replaces.get("attn1", {}))
        capture = CaptureNative(store)
        for block in self.blocks:
            attn1[block] = capture
        replaces["attn1"] = attn1
        return {**stripped, "patches_replace": replaces}


def modulated_blocks(unet: UNetMap, layers: str) -> list[tuple[str, int]]:
    """The decoder's self-attention blocks to modulate: ``deepest``, FAM's choice (its deepest
    attention level, "up block 0" of the paper), or ``all`` of them."""
    blocks = [info for info in unet.output_blocks if info.self_attention]
    if layers == "deepest" and blocks:
        deepest = max(info.level for info in blocks)
        blocks = [info for info in blocks if info.level == deepest]
    return [("output", info.index) for info in blocks]


def apply_modulation(
    model: Any, reference: torch.Tensor, size: tuple[int, int], weight: float, layers: str, unet: UNetMap
) -> Any:
    """A clone of ``model`` with attention modulation towards ``reference`` (the native latent)
    on calls of ``size``; ``model`` itself is untouched. An earlier modulation of the pack is
    replaced; another attention replacement at a block runs inside the modulation."""
    patched = model.clone()
    patched.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, EFFECT)
    replaces = patched.model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {})
    attn1 = replaces.get("attn1", {})
    for key, patch in list(attn1.items()):
        if effect_of(patch) == EFFECT:
            attn1[key] = patch.inner
            if patch.inner is None:
                del attn1[key]
    blocks = modulated_blocks(unet, layers)
    for kind, index in blocks:
        patched.set_model_attn1_replace(ModulatedAttention(weight, attn1.get((kind, index))), kind, index)
    patched.add_wrapper_with_key(WrappersMP.APPLY_MODEL, EFFECT, NativeMaps(reference, size, blocks))
    install_run_state(patched, EFFECT)
    return patched
