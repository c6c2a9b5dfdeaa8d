"""Installing HiDiffusion on a diffusers UNet, and removing it without a trace.

Two mechanisms, each where it fits:

* The UNet itself gets a torch forward pre-hook and an ``always_call`` forward hook (and,
  in the guided mode, the lock's forward hook and the native views' hooks,
  :mod:`hidiff.diffusers.views`).
  The pre-hook reads the call's latent size and timestep, locates the step and builds
  the call's :class:`~hidiff.diffusers.state.CallState`; the forward hook drops it even
  when the call raises. torch hooks live outside ``forward``, so accelerate's offload
  hooks (which replace ``unet.forward``) can be added before or after, and removal never
  disturbs them.
* Submodules get ``diffusers.hooks`` ModelHooks (see :mod:`hidiff.diffusers.hooks`),
  which can rewrite arguments and, for attn1 and the RAD Downsample, replace the call.

Nothing is swapped or copied: no class changes, no copied UNet or pipeline forward, no
``num_upsamplers`` change, no counters. :meth:`Installation.detach` removes every hook
and the attributes the hook registry left, so the UNet is as before ``apply``.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import replace
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from ..core.gate import at_or_below_native
from ..core.measured import schedule_for
from ..core.official import Schedule, aggressive_by_default, official_schedule
from ..core.settings import GuideSettings
from ..core.windows import shift_sequence
from ..log import logger
from .calls import UNetCalls
from .guide import LowBandLockHook, check_reference
from .hooks import (
    DownsampleHook,
    GridHook,
    MidResidualHook,
    PoolHook,
    RestoreHook,
    StateSlot,
    UpBlockHook,
    WindowAttentionHook,
    sample_and_timestep,
)
from .position import RunPosition, ScheduleReader, timestep_value
from .state import CallState, HiDiffusionOptions
from .structure import DiffusersLayout, self_attention_blocks
from .views import NativeViews

HOOK_NAME = "hidiffusion"
"""Prefix of every ModelHook name this package registers."""
ATTRIBUTE = "_hidiffusion"
"""The UNet attribute that holds the installation while HiDiffusion is applied."""
_SEED_STRIDE = 1_000_003
"""Mixes window_seed and the step index into one generator seed (a prime, so distinct
(seed, step) pairs of any realistic run give distinct seeds)."""


class Installation:
    """HiDiffusion applied to one UNet: its settings, hooks and the call in progress."""

    def __init__(
        self,
        unet: nn.Module,
        layout: DiffusersLayout,
        options: HiDiffusionOptions,
        *,
        raunet: bool,
        windows: bool,
        pipeline: Any = None,
    ) -> None:
        self.unet, self.layout, self.options = unet, layout, options
        self.raunet, self.windows = raunet, windows
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self.native_latent = _native_latent(layout, options, pipeline)
        self.aggressive = (
            options.aggressive if options.aggressive is not None else aggressive_by_default(layout.in_channels)
        )
        self.text_to_image_controlnet = (
            options.text_to_image_controlnet
            if options.text_to_image_controlnet is not None
            else _is_text_to_image_controlnet(pipeline)
        )
        base = self.schedule(2 * self.native_latent, 2 * self.native_latent)
        self.layout = replace(layout, rad_level=base.rad_level)  # no schedule moves the pooling
        self.window_grid = options.window_grid or base.window_grid
        self.slot = StateSlot()
        self.schedule_reader = ScheduleReader()  # both set again by every attach
        self.window_count = 0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._module_hooks: list[tuple[nn.Module, str, bool]] = []
        self._warned: set[str] = set()
        self.lock = self._lock(options)
        self.views = self._views(options)

    # ----------------------------------------------------------------- install / remove

    def attach(self) -> None:
        """Register every hook; the UNet behaves as stock until its next call. Attaching
        again after :meth:`detach` gives the hooks of the first attach (the window count
        and the schedule position start over)."""
        self.window_count = 0
        self.schedule_reader = ScheduleReader()
        if self.raunet:
            self._attach_raunet_hooks()
        if self.windows:
            self._attach_window_hooks()
        unet, views = self.unet, self.views
        if views is not None:  # first: at share 1 the UNet's input becomes the views
            self._handles.append(unet.register_forward_pre_hook(views.before, with_kwargs=True))
        self._handles.append(unet.register_forward_pre_hook(self._begin_call, with_kwargs=True))
        self._handles.append(unet.register_forward_hook(self._end_call, with_kwargs=True, always_call=True))
        if views is not None:  # before the lock, which acts on the views' prediction
            self._handles.append(unet.register_forward_hook(views.after, with_kwargs=True))
        if self.lock is not None:
            self._handles.append(unet.register_forward_hook(self.lock, with_kwargs=True))
        if views is not None:
            self._handles.append(unet.register_forward_hook(views.forget, with_kwargs=True, always_call=True))
        self._invalidate_registry_cache()

    def detach(self) -> None:
        """Remove every hook and registry leftover, newest first."""
        for handle in reversed(self._handles):
            handle.remove()
        for module, name, created in reversed(self._module_hooks):
            registry = module._diffusers_hook
            registry.remove_hook(name, recurse=False)
            if created and not registry.hooks:
                _drop_registry(module)
        self._handles.clear()
        self._module_hooks.clear()
        self.slot.current = None
        self._invalidate_registry_cache()

    def _lock(self, options: HiDiffusionOptions) -> LowBandLockHook | None:
        """The guided mode's lock, when ``reference`` is given (checked here, before any call)."""
        if options.reference is None:
            return None
        if self._pipeline is None and options.scheduler is None:
            raise ValueError("the guided mode on a bare UNet needs scheduler=<the scheduler your loop uses>")
        reference = check_reference(options.reference, int(self.unet.config.out_channels))
        return LowBandLockHook(reference, options.guide or GuideSettings(), UNetCalls(self._scheduler))

    def _views(self, options: HiDiffusionOptions) -> NativeViews | None:
        """The guided mode's native views (the node's second half), when ``reference`` is
        given and the views' share is above 0."""
        settings = options.guide or GuideSettings()
        if self.lock is None or settings.views == 0.0:
            return None
        size = (int(self.lock.reference.shape[-2]), int(self.lock.reference.shape[-1]))
        views = NativeViews(size, settings, self.lock.reader, self._tell_once)
        self.lock.call_of = views.call_of
        return views

    def _scheduler(self) -> Any:
        pipeline = self._pipeline() if self._pipeline is not None else None
        return getattr(pipeline, "scheduler", None) if pipeline is not None else self.options.scheduler

    def _hook(self, module: nn.Module, role: str, hook: ModelHook) -> None:
        created = not hasattr(module, "_diffusers_hook")
        name = f"{HOOK_NAME}_{role}"
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        self._module_hooks.append((module, name, created))

    def _attach_raunet_hooks(self) -> None:
        """Size bookkeeping on every resampler (needed whenever sizes change), the RAD
        level, the pool pair and its restore, and the ControlNet mid residual."""
        layout, down, up = self.layout, self.unet.down_blocks, self.unet.up_blocks
        for level, block in enumerate(down[:-1]):
            rad = level == layout.rad_level
            self._hook(block.downsamplers[0], "downsample", DownsampleHook(self.slot, level, rad))
        for index, block in enumerate(up):
            target = layout.levels - 2 - index if index < layout.levels - 1 else None
            self._hook(block, "up_block", UpBlockHook(self.slot, target))
        self._hook(self.unet.mid_block, "mid_residual", MidResidualHook(self.slot))
        self._hook(_pair(down[layout.pool_level], 0), "pool", PoolHook(self.slot))
        restore = _pair(up[layout.mirror(layout.pool_level)], layout.restore_pair)
        self._hook(restore, "restore", RestoreHook(self.slot))

    def _attach_window_hooks(self) -> None:
        """MSW-MSA on attn1 of every transformer block at the finest attention level."""
        level = self.layout.attention_level
        native_side = max(1, -(-self.native_latent // 2**level))  # the native token grid at that level
        blocks = {
            f"down_blocks.{level}": self.unet.down_blocks[level],
            f"up_blocks.{self.layout.mirror(level)}": self.unet.up_blocks[self.layout.mirror(level)],
        }
        for block_name, block in blocks.items():
            for a, transformer in enumerate(block.attentions):
                grid_name = f"{block_name}.attentions.{a}"
                self._hook(transformer, "grid", GridHook(self.slot, grid_name))
                for transformer_block in self_attention_blocks(transformer):
                    hook = WindowAttentionHook(self.slot, grid_name, self.window_count, self.window_grid, native_side)
                    self._hook(transformer_block.attn1, "window", hook)
                    self.window_count += 1

    def _invalidate_registry_cache(self) -> None:
        registry = getattr(self.unet, "_diffusers_hook", None)
        if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
            registry.invalidate_child_registries_cache()

    # ----------------------------------------------------------------------- per call

    def _begin_call(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Forward pre-hook: the state of this call, and the ControlNet residuals taken
        over when the feature maps will not have their stock sizes."""
        self.slot.current = None
        sample, timestep = sample_and_timestep(args, kwargs)
        state = self._call_state(int(sample.shape[-2]), int(sample.shape[-1]), timestep)
        if state is not None and state.resizing:
            kwargs = self._take_residuals(state, kwargs)
        self.slot.current = state
        return args, kwargs

    def _end_call(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
        """Forward hook (always called, also when the call raises): forget the call."""
        self.slot.current = None
        return output

    def _call_state(self, height: int, width: int, timestep: Any) -> CallState | None:
        if self.views is not None and self.views.runs_views():
            return None
        if self.options.gate_native and at_or_below_native(height, width, self.native_latent):
            return None
        position = self._position(timestep) if timestep is not None else None
        rad = pool = False
        if self.raunet and position is not None:
            schedule = self.schedule(height, width)
            rad = schedule.rad is not None and schedule.rad.contains(position.step, position.total)
            pool = schedule.pool is not None and schedule.pool.contains(position.step, position.total)
            logger.debug(f"step {position.step + 1}/{position.total} ({schedule.key}): RAD/RAU {rad}, pool {pool}")
        shifts = self._shifts(position, timestep) if self.windows else ()
        return CallState(rad=rad, pool=pool, windows=self.windows, shifts=shifts)

    def schedule(self, height: int, width: int) -> Schedule:
        """The schedule of a latent of ``height`` x ``width``: the official one, or the
        ``schedule`` option's in its place. Its levels and window grid are the same at every
        size above the native one, so the hooks take them from the schedule at twice it."""
        family, turbo, aggressive = self.layout.family, self.options.turbo, self.aggressive
        cn = self.text_to_image_controlnet
        official = official_schedule(
            family, height, width, turbo=turbo, aggressive=aggressive, text_to_image_controlnet=cn
        )
        return schedule_for(
            self.options.schedule, official, family, turbo=turbo, aggressive=aggressive, text_to_image_controlnet=cn
        )

    def _position(self, timestep: Any) -> RunPosition | None:
        scheduler = self._scheduler()
        if scheduler is None:
            return None
        position = self.schedule_reader.locate(timestep, scheduler)
        if position is None:
            self._warn_once("timesteps", "the scheduler has no timesteps (set_timesteps not called); RAU-Net is off")
        return position

    def _shifts(self, position: RunPosition | None, timestep: Any) -> tuple[int, ...]:
        """The call's window shifts from a private generator: one draw per windowed attn1,
        i.i.d. over the 4 positions as in the official code, seeded by (window_seed, step)."""
        return shift_indices(self.options.window_seed, _seed_step(position, timestep), self.window_count)

    def _take_residuals(self, state: CallState, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Move the ControlNet residuals from the UNet's arguments to the call state, so
        the hooks add them at the actual sizes (the stock UNet would fail on a mismatch)."""
        down = kwargs.get("down_block_additional_residuals")
        mid = kwargs.get("mid_block_additional_residual")
        if kwargs.get("down_intrablock_additional_residuals") is not None:
            self._warn_once("adapter", "T2I-Adapter residuals are not resized; sizes may not match under RAU-Net")
        if down is None or mid is None:
            return kwargs
        state.down_residuals, state.mid_residual = list(down), mid
        return {**kwargs, "down_block_additional_residuals": None, "mid_block_additional_residual": None}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _tell_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.info(message)


def shift_indices(window_seed: int, step: int, count: int) -> tuple[int, ...]:
    """The window shift index (0-3) of each of ``count`` windowed attn1 layers at ``step``.

    i.i.d. uniform draws as in the official code, but from a private CPU generator
    seeded with (window_seed, step): the same run gets the same windows, and neither the
    global RNG nor the sampling noise is touched.
    """
    return tuple(shift_sequence((window_seed * _SEED_STRIDE + step) % 2**63, count, "independent"))


def _seed_step(position: RunPosition | None, timestep: Any) -> int:
    """The step index for the shift seed; without a schedule, the rounded timestep."""
    if position is not None:
        return position.step
    if timestep is None:
        return 0
    return round(timestep_value(timestep))


def _pair(block: nn.Module, index: int) -> nn.Module:
    """The module that ends pair ``index`` of a block: its attention, or its resnet."""
    attentions = getattr(block, "attentions", None)
    return attentions[index] if attentions else block.resnets[index]


def _native_latent(layout: DiffusersLayout, options: HiDiffusionOptions, pipeline: Any) -> int:
    if options.native_resolution is None:
        return layout.native_latent
    factor = int(getattr(pipeline, "vae_scale_factor", 8) or 8)
    return options.native_resolution // factor


def _is_text_to_image_controlnet(pipeline: Any) -> bool:
    """A ControlNet pipeline whose control image is its ``image`` (no ``control_image``)."""
    if pipeline is None or getattr(pipeline, "controlnet", None) is None:
        return False
    return "control_image" not in inspect.signature(type(pipeline).__call__).parameters


def _drop_registry(module: nn.Module) -> None:
    """Remove the hook registry and the plain bound ``forward`` it leaves on the instance,
    so the module is exactly as before (a leftover bound method would also follow the
    module into deepcopies, bound to the original)."""
    del module._diffusers_hook
    forward = module.__dict__.get("forward")
    if getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward:
        del module.__dict__["forward"]
