"""The diffusers hooks that carry out HiDiffusion inside a UNet call.

Each hook is a ``diffusers.hooks.ModelHook`` on one submodule and holds no state of its
own: it reads the :class:`~hidiff.diffusers.state.CallState` of the call in progress
from a shared :class:`StateSlot`, and does nothing between calls or when the call state
says its part is off. Which module gets which hook is decided in
:mod:`hidiff.diffusers.install`.

* :class:`DownsampleHook` (every Downsample2D): records the size of the level's last
  skip, the exact target of the upsampler that returns to the level; on the RAD level,
  runs the layer as RAD via :func:`~hidiff.core.raunet.resolution_aware_downsample`.
* :class:`UpBlockHook` (every up block): while sizes differ from stock, passes the
  recorded skip size as ``upsample_size`` (RAU is then the stock nearest upsample to the
  skip size, as in the official code), and adds the ControlNet residuals to its skips.
* :class:`PoolHook` / :class:`RestoreHook`: avg-pool after the first pair of the pooled
  level, bicubic back to the stored size after the mirrored pair.
* :class:`MidResidualHook`: adds the ControlNet mid residual at the mid block's size.
* :class:`GridHook` / :class:`WindowAttentionHook`: MSW-MSA on attn1, with the token grid
  taken from the Transformer2DModel's input.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from ..core.raunet import ca_downscale, resize, resolution_aware_downsample
from ..core.windows import OFFICIAL_GRID, grid_of_windows, parse_window_grid, partition, reverse, window_layout
from .state import CallState

CONTROLNET_RESIZE = "bicubic"
"""How ControlNet residuals are brought to the feature-map size (the official choice)."""
RESTORE_MODE = "bicubic"
"""How the pooled map is restored (the official choice)."""


class StateSlot:
    """The state of the UNet call in progress; None between calls.

    Not diffusers' ``StateManager``: that keeps one state per cache context (``"cond"``,
    ``"uncond"``) for the whole run and raises when no context is set, which a bare UNet
    call or a pipeline that sets none never does. HiDiffusion's state belongs to one call
    and must be gone when it ends, raised or not (see :mod:`hidiff.diffusers.state`).
    """

    def __init__(self) -> None:
        self.current: CallState | None = None


def main_tensor(output: Any) -> torch.Tensor:
    """The feature map in a block's output: a tensor, a ``(tensor, ...)`` tuple or a
    ``*Output`` with ``.sample``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def replace_main(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with its feature map replaced, in the same container."""
    if isinstance(output, torch.Tensor):
        return tensor
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    output.sample = tensor
    return output


def sample_and_timestep(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
    """A UNet call's sample and timestep, passed by position or by name."""
    sample = args[0] if args else kwargs["sample"]
    timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
    return sample, timestep


def size_of(tensor: torch.Tensor) -> tuple[int, int]:
    """(height, width) of an (N, C, H, W) tensor."""
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def add_resized(features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``features + residual`` with the residual resized to the features' size first
    (same operand order as the stock UNet, so equal sizes give bit-identical sums)."""
    return features + resize(residual, *size_of(features), CONTROLNET_RESIZE)


class DownsampleHook(ModelHook):
    """On a Downsample2D: record its input size; on the RAD level, run it as RAD."""

    def __init__(self, slot: StateSlot, level: int, rad: bool) -> None:
        super().__init__()
        self.slot, self.level, self.rad = slot, level, rad

    def new_forward(self, module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        original = self.fn_ref.original_forward
        state = self.slot.current
        if state is None:
            return original(hidden_states, *args, **kwargs)
        state.skip_sizes[self.level] = size_of(hidden_states)
        if self.rad and state.rad:
            return resolution_aware_downsample(lambda x: original(x, *args, **kwargs), hidden_states)
        return original(hidden_states, *args, **kwargs)


class UpBlockHook(ModelHook):
    """On an up block: the exact upsample size while sizes differ, and ControlNet residuals."""

    def __init__(self, slot: StateSlot, target_level: int | None) -> None:
        super().__init__()
        self.slot, self.target_level = slot, target_level

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        state = self.slot.current
        if state is None:
            return args, kwargs
        if state.resizing and self.target_level is not None and self.target_level in state.skip_sizes:
            kwargs["upsample_size"] = state.skip_sizes[self.target_level]
        if state.down_residuals is not None:
            args, kwargs = self._add_residuals(state, args, kwargs)
        return args, kwargs

    @staticmethod
    def _add_residuals(
        state: CallState, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Add the residuals of the skips this block consumes: the last ``len(skips)``
        still pending, exactly as the UNet slices its skip list."""
        positional = "res_hidden_states_tuple" not in kwargs
        skips = args[1] if positional else kwargs["res_hidden_states_tuple"]
        count = len(skips)
        mine, state.down_residuals = state.down_residuals[-count:], state.down_residuals[:-count]
        summed = tuple(add_resized(skip, residual) for skip, residual in zip(skips, mine, strict=True))
        if positional:
            return (args[0], summed, *args[2:]), kwargs
        return args, {**kwargs, "res_hidden_states_tuple": summed}


class PoolHook(ModelHook):
    """After the first pair of the pooled level: avg_pool2d(2, ceil_mode=True), size stored."""

    def __init__(self, slot: StateSlot) -> None:
        super().__init__()
        self.slot = slot

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        state = self.slot.current
        if state is None or not state.pool:
            return output
        features = main_tensor(output)
        state.pooled_from = size_of(features)
        return replace_main(output, ca_downscale(features, 2, 2, "avg_pool2d"))


class RestoreHook(ModelHook):
    """After the mirrored pair: bicubic back to the size stored before pooling."""

    def __init__(self, slot: StateSlot) -> None:
        super().__init__()
        self.slot = slot

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        state = self.slot.current
        if state is None or state.pooled_from is None:
            return output
        return replace_main(output, resize(main_tensor(output), *state.pooled_from, RESTORE_MODE))


class MidResidualHook(ModelHook):
    """After the mid block: add the ControlNet mid residual at the actual size."""

    def __init__(self, slot: StateSlot) -> None:
        super().__init__()
        self.slot = slot

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        state = self.slot.current
        if state is None or state.mid_residual is None:
            return output
        return replace_main(output, add_resized(main_tensor(output), state.mid_residual))


class GridHook(ModelHook):
    """Before a windowed Transformer2DModel: record the (height, width) of its token grid."""

    def __init__(self, slot: StateSlot, name: str) -> None:
        super().__init__()
        self.slot, self.name = slot, name

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        state = self.slot.current
        if state is not None and state.windows:
            hidden_states = args[0] if args else kwargs["hidden_states"]
            state.grids[self.name] = size_of(hidden_states)
        return args, kwargs


class WindowAttentionHook(ModelHook):
    """MSW-MSA on an attn1: self-attention inside the shifted windows of the grid (2x2, or
    the ``window_grid`` option's).

    attn1 is a self-attention whose projections act token by token, so windowing its
    input and running the unchanged module once per group of equally shaped windows (one
    call on even grids) is windowed attention on exactly the layer's own q, k and v; the
    processor, LoRA layers and attention backend stay whatever they are.
    """

    def __init__(
        self,
        slot: StateSlot,
        grid_name: str,
        index: int,
        window_grid: str = OFFICIAL_GRID,
        native_side: int | None = None,
    ) -> None:
        super().__init__()
        self.slot, self.grid_name, self.index = slot, grid_name, index
        self.window_grid, self.native_side = parse_window_grid(window_grid), native_side

    def new_forward(self, module: nn.Module, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        original = self.fn_ref.original_forward
        state = self.slot.current
        grid = state.grids.get(self.grid_name) if state is not None and state.windows else None
        plain = (
            grid is None
            or args
            or kwargs.get("encoder_hidden_states") is not None
            or kwargs.get("attention_mask") is not None
            or hidden_states.ndim != 3
            or hidden_states.shape[1] != grid[0] * grid[1]
        )
        if plain:
            return original(hidden_states, *args, **kwargs)
        rows, cols = grid_of_windows(self.window_grid, grid[0], grid[1], self.native_side)
        layout = window_layout(grid[0], grid[1], state.shifts[self.index], rows, cols)
        groups = partition(hidden_states, layout)
        return reverse([(ids, original(windows, **kwargs)) for ids, windows in groups], layout)
