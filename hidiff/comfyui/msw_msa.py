"""MSW-MSA in ComfyUI: an attn1 replace patch per chosen block, gated by sigma.

The patch receives the projected q, k, v of a self-attention call and runs ComfyUI's own
attention function inside the shifted windows (:mod:`hidiff.core.windows`). The token
grid comes from ``activations_shape`` that ComfyUI records for every SpatialTransformer,
so it is exact at every size and aspect ratio. Any call it cannot window (outside the
time range, a token count changed by another patch, cross-attention in attn1) runs the
very same attention call as an unpatched model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import comfy.ldm.modules.attention as comfy_attention
import torch

from ..core.schedule import SigmaRange, sigma_range
from ..core.settings import MswMsaSettings
from ..core.unet_map import UNetMap
from ..core.windows import (
    NATIVE_GRID,
    OFFICIAL_GRID,
    WindowLayout,
    grid_of_windows,
    window_layout,
    windowed_attention,
)
from ..log import logger
from .blocks import format_block_list
from .model_info import default_native_latent, percent_to_sigma, unet_map_of
from .params import (
    ParameterError,
)
from .patch_base import MSW_MSA, SharedPatch, effect_of
from .run_state import RunState, install_run_state, run_state, sigma_of

EFFECT = MSW_MSA
BLOCK_KINDS = ("input", "middle", "output")


class MswMsaAttention(SharedPatch):
    """The attn1 replace patch: windowed attention while active, stock attention otherwise.

    Immutable and shared between clones (``__deepcopy__`` returns itself), so cloning a
    patched model never duplicates or resets anything.
    """

    hidiffusion_effect = EFFECT

    def __init__(
        self,
        blocks: Iterable[tuple[str, int]],
        time: SigmaRange,
        shift_mode: str,
        verbose: bool,
        window_grid: str = OFFICIAL_GRID,
        native_sides: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        self.blocks = frozenset(blocks)
        self.time = time
        self.shift_mode = shift_mode
        self.verbose = verbose
        self.window_grid = window_grid
        self.native_sides = dict(native_sides or {})

    def __repr__(self) -> str:
        return (
            f"MswMsaAttention(blocks={sorted(self.blocks)}, time={self.time}, shift_mode={self.shift_mode!r}, "
            f"window_grid={self.window_grid!r})"
        )

    def grid_for(self, block: tuple[str, int], height: int, width: int) -> tuple[int, int]:
        """Rows and columns of windows for a ``height`` x ``width`` token grid at ``block``."""
        return grid_of_windows(self.window_grid, height, width, self.native_sides.get(block))

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return comfy_attention.optimized_attention(
                q,
                k,
                v,
                extra_options["n_heads"],
                attn_precision=extra_options.get("attn_precision"),
                transformer_options=extra_options,
            )

        layout = self.layout_for(q, k, v, extra_options)
        if layout is None:
            return attention(q, k, v)
        return windowed_attention(q, k, v, layout, attention)

    def layout_for(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> WindowLayout | None:
        """The window layout of this call, or None to run it unpatched."""
        block = extra_options.get("block")
        if block is None or tuple(block[:2]) not in self.blocks:
            return None
        sigma = sigma_of(extra_options)
        if sigma is None or not self.time.contains(sigma):
            return None
        state = run_state(extra_options, EFFECT)
        name = f"{block[0]} block {block[1]}"
        shape = extra_options.get("activations_shape")
        if shape is None or len(shape) != 4:
            _tell(state, f"MSW-MSA skipped on {name}: ComfyUI gave no feature-map shape for this call")
            return None
        height, width = int(shape[-2]), int(shape[-1])
        grid = height * width
        if q.shape[1] == grid and (k.shape[1] != grid or v.shape[1] != grid):
            _tell(state, f"MSW-MSA skipped on {name}: attn1 attends to another sequence here (cross-attention)")
            return None
        if q.shape[1] != grid or k.shape[1] != grid or q.shape[0] != k.shape[0]:
            _tell(
                state,
                f"MSW-MSA skipped on {name}: {q.shape[1]} tokens do not match the {height}x{width} map "
                "(another patch changed the attention tokens); that block runs unpatched",
            )
            return None
        block_key = (block[0], block[1], extra_options.get("block_index", 0))
        if state is not None:
            shift = state.shift_index(block_key, sigma, self.shift_mode)
        else:
            shift = 0
            logger.debug("MSW-MSA on %s ran outside a sampler (no run state): shift 0", name)
        rows, cols = self.grid_for(tuple(block[:2]), height, width)
        layout = window_layout(height, width, shift, rows, cols)
        if self.verbose and state is not None:
            state.tell_once(
                f"MSW-MSA {name}.{block_key[2]}: {height}x{width} tokens, {rows}x{cols} windows of "
                f"{layout.window_h}x{layout.window_w}, shift unit {layout.window_h // 4}x{layout.window_w // 4}",
                level="info",
            )
        return layout


def _tell(state: RunState | None, message: str) -> None:
    if state is not None:
        state.tell_once(message)
    else:
        logger.debug(message)


def check_blocks(settings: MswMsaSettings, unet: UNetMap) -> list[tuple[str, int]]:
    """The chosen blocks that have self-attention; the others are reported once, with the valid ones."""
    targets = []
    for kind in BLOCK_KINDS:
        valid = unet.self_attention_blocks(kind)
        chosen = settings.blocks(kind)
        invalid = [b for b in chosen if b not in valid]
        if invalid:
            logger.warning(
                f"MSW-MSA: {kind}_blocks {format_block_list(invalid)} have no self-attention on this model "
                f"({unet.describe()}) and are ignored; valid {kind}_blocks: {format_block_list(valid) or 'none'}"
            )
        targets.extend((kind, b) for b in chosen if b in valid)
    return targets


def native_token_sides(
    model: Any, unet: UNetMap, settings: MswMsaSettings, blocks: Iterable[tuple[str, int]]
) -> dict[tuple[str, int], int]:
    """{block: side of the native token grid where its attention runs}: the native latent
    side halved once per level (an output block's attention runs before its Upsample)."""
    native = (
        settings.native_resolution // 8 if settings.native_resolution else default_native_latent(model, unet.family)
    )
    sides = {}
    for kind, index in blocks:
        info = unet.blocks(kind)[index]
        level = info.level + (1 if info.upsample else 0)
        sides[(kind, index)] = max(1, -(-native // 2**level))
    return sides


def apply_msw_msa(model: Any, settings: MswMsaSettings) -> Any:
    """A clone of ``model`` with MSW-MSA on the chosen blocks; ``model`` itself is untouched.

    Applying it again to an already patched model replaces the earlier MSW-MSA settings.
    """
    unet = unet_map_of(model)
    if not unet.supported:
        raise ParameterError(
            f"MSW-MSA applies to SD1.x, SD2.x and SDXL UNets; this model cannot be patched: {unet.reason}"
        )
    time = sigma_range(settings.time_mode, settings.start_time, settings.end_time, percent_to_sigma(model))
    targets = check_blocks(settings, unet)
    patched = model.clone()
    replaces = (
        patched.model_options.setdefault("transformer_options", {}).setdefault("patches_replace", {}).get("attn1", {})
    )
    for key in [key for key, patch in replaces.items() if effect_of(patch) == EFFECT]:
        del replaces[key]
    usable = []
    for kind, index in targets:
        foreign = [key for key in replaces if tuple(key[:2]) == (kind, index)]
        if foreign:
            logger.warning(
                f"MSW-MSA: {kind} block {index} already has an attention replacement from another node; "
                "that node keeps the block and MSW-MSA leaves it alone"
            )
            continue
        usable.append((kind, index))
    native_sides = native_token_sides(model, unet, settings, usable) if settings.window_grid == NATIVE_GRID else None
    patch = MswMsaAttention(usable, time, settings.shift_mode, settings.verbose, settings.window_grid, native_sides)
    for kind, index in usable:
        patched.set_model_attn1_replace(patch, kind, index)
    install_run_state(patched, EFFECT)
    if settings.verbose or not usable:
        logger.info(f"MSW-MSA: {patch!r}" if usable else "MSW-MSA: no block to window; the model is unchanged")
    return patched
