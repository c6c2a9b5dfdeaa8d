"""The resampling methods RAU-Net offers in ComfyUI: torch's, ComfyUI's bislerp, and
ComfyUI-bleh's when that pack is loaded (a feature of the seed pack).

ComfyUI-bleh publishes itself in ``sys.modules["_blepping_integrations"]["bleh"]`` when
ComfyUI loads it; that is the integration point it offers other packs, so nothing here
imports it by path or changes it. Node inputs ask for the method lists when ComfyUI
builds the schema (every ``/object_info`` request and every validation), so the lists
are right whichever pack ComfyUI loaded first. Only the bleh methods that resize a probe
exactly are offered (bleh's list also holds blend modes that fail on a resize).

bleh's ``random`` modes and its ``renoise`` enhancements draw from the global torch
RNG. Each call here runs them inside :func:`torch.random.fork_rng` with the generators
seeded from the sampling seed, the block and the sigma, so the same seed gives the same
image and the global RNG is left as it was.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from collections.abc import Iterator
from typing import Any

import comfy.utils
import torch

from ..core.raunet import CA_DOWNSCALE_METHODS, TWO_STAGE_MODES, UPSCALE_METHODS, ResizeError
from ..log import logger
from .run_state import run_state, sigma_of, stable_hash

BLEH_NOTE = "ComfyUI-bleh's methods are offered too when it is installed."

_BLEH_SALT = "bleh resampling"

_PROBE_UP = ((1, 4, 5, 7), (19, 27))
_PROBE_DOWN = ((1, 4, 37, 53), (19, 18))
"""The odd, non-square resizes every offered bleh method must do exactly; bleh's list holds
blend modes that fail on a resize (their padding or slicing needs other shapes), and pooling
modes whose kernels round the wrong way."""


def bleh() -> Any | None:
    """The loaded ComfyUI-bleh package, or None."""
    integrations = sys.modules.get("_blepping_integrations")
    return integrations.get("bleh") if isinstance(integrations, dict) else None


def _bleh_latent_utils() -> Any | None:
    package = bleh()
    return getattr(getattr(package, "py", None), "latent_utils", None)


def _bleh_methods(direction: str) -> tuple[str, ...]:
    utils = _bleh_latent_utils()
    return () if utils is None else _working_methods(utils, direction)


@functools.cache
def _working_methods(utils: Any, direction: str) -> tuple[str, ...]:
    """bleh's methods (not ours) that resize the probe exactly, in bleh's order.

    Tried once per process and bleh module, on the CPU, with the global RNG kept as it was.
    """
    shape, (height, width) = _PROBE_UP if direction == "up" else _PROBE_DOWN
    probe = torch.linspace(-1.0, 1.0, math.prod(shape)).reshape(shape)
    found, dropped = [], []
    for method in getattr(utils, "UPSCALE_METHODS", ()):
        if method in UPSCALE_METHODS or method in CA_DOWNSCALE_METHODS:
            continue
        try:
            with seeded_global_rng(0, probe.device):
                out = utils.scale_samples(probe, width, height, mode=method)
            works = tuple(out.shape) == (*shape[:2], height, width)
        except Exception:  # noqa: BLE001 (any failure means: not offered)
            works = False
        (found if works else dropped).append(method)
    if dropped:
        logger.debug(f"ComfyUI-bleh methods that cannot {direction}scale exactly, not offered: {', '.join(dropped)}")
    return tuple(found)


def upscale_methods() -> tuple[str, ...]:
    """Methods for resampling to a larger map: ours in the seed's order, then bleh's."""
    return UPSCALE_METHODS + _bleh_methods("up")


def two_stage_modes() -> tuple[str, ...]:
    """``two_stage_upscale_mode`` values: disabled or an upscale method."""
    return TWO_STAGE_MODES + _bleh_methods("up")


def ca_downscale_methods() -> tuple[str, ...]:
    """Methods for the CA shrink: the official pooling, ours, then bleh's."""
    return CA_DOWNSCALE_METHODS + _bleh_methods("down")


class CallResampler:
    """The host half of :func:`hidiff.core.raunet.resize` for one model call.

    ``bislerp`` is ComfyUI's; every other method not in torch is bleh's, run with the
    global generators seeded by the run's seed, the block and the sigma of the call
    (:meth:`seed`), and restored afterwards. Outside a sampling run (no run state) the
    seed part is 0, so such a call is still repeatable.

    Args:
        options: the call's ``transformer_options`` (``{}`` where there are none).
        effect: the effect whose run state holds the seed.
    """

    def __init__(self, options: dict, effect: str) -> None:
        self.options = options
        self.effect = effect

    def __call__(self, x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
        if mode == "bislerp":
            return comfy.utils.bislerp(x, width, height)
        package, utils = bleh(), _bleh_latent_utils()
        if utils is None:
            raise ResizeError(f"resampling method {mode!r} needs ComfyUI-bleh, which is not loaded")
        sigma = sigma_of(self.options)
        extra = {"sigma": sigma} if getattr(package, "BLEH_VERSION", -1) >= 0 else {}
        with seeded_global_rng(self.seed(sigma), x.device):
            out = utils.scale_samples(x, width, height, mode=mode, **extra)
        if tuple(out.shape[-2:]) != (height, width):
            raise ResizeError(f"bleh's {mode!r} gave {tuple(out.shape[-2:])}, not {(height, width)}")
        return out

    def seed(self, sigma: float | None) -> int:
        """The seed of this call's draws."""
        state = run_state(self.options, self.effect)
        block = self.options.get("block")
        return stable_hash(_BLEH_SALT, 0 if state is None else state.seed, tuple(block or ()), sigma)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the CPU generator (and ``device``'s) seeded, then restore them.

    Only the generators that are forked are seeded (never ``torch.manual_seed``, which
    would reseed every GPU), so nothing outside stays changed.
    """
    accelerated = device.type not in ("cpu", "meta")
    devices = [device] if accelerated else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if accelerated else "cuda"):
        torch.random.default_generator.manual_seed(seed)
        if accelerated:
            module = getattr(torch, device.type)
            with module.device(device) if hasattr(module, "device") else contextlib.nullcontext():
                module.manual_seed(seed)
        yield
