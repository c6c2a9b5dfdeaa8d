"""Options of ``apply_hidiffusion`` and the state of one UNet call.

The options are fixed at apply time. The call state is created by the UNet's forward
pre-hook for every call and dropped by its forward hook, which runs even when the call
raises, so a failed or interrupted call leaves nothing for the next one to trip over (the
official code's shared pooled size and counters did: "Sizes of tensors must match").
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..core.measured import SCHEDULE_NAMES
from ..core.settings import GuideSettings
from ..core.windows import parse_window_grid


@dataclass(frozen=True)
class HiDiffusionOptions:
    """Keyword options of ``apply_hidiffusion`` beyond the official two switches.

    Args:
        gate_native: do nothing for a latent whose larger side is at or below the model's
            native size (``unet.config.sample_size``): there RAU-Net only harms quality and
            MSW-MSA gains nothing. The official package applies at every size; pass False
            for that.
        native_resolution: the native size in pixels, overriding ``config.sample_size``
            (divided by the pipeline's ``vae_scale_factor``, 8 for a bare UNet).
        turbo: an SDXL-Turbo-style few-step model: pooling only, for the first half of the
            steps (the official package recognises only the exact hub id).
        aggressive: SDXL below 4096 px runs RAD first, then pooling. None (default): on,
            except for inpainting UNets (9 input channels), as the official package does
            for inpainting model names; pass False for Playground-style models.
        text_to_image_controlnet: the official SDXL text-to-image ControlNet schedule
            (pooling until 50 % instead of 40 %). None (default): true for a ControlNet
            pipeline whose ``__call__`` has no ``control_image`` (the text-to-image ones).
        schedule: ``"official"`` (default): the official package's schedule.
            ``"measured"``: the ComfyUI auto node's default, what the quality lab measured
            better (:mod:`hidiff.core.measured`): for SDXL (aggressive, not turbo) RAD at the
            first Downsample for the first half of the steps and no pooling; for SD1.x and
            SDXL MSW-MSA windows no larger than the native token grid.
        window_grid: MSW-MSA's grid of windows: ``"2x2"`` (the official method),
            ``"native"`` (ceil(token grid / native token grid) windows a side, at least 2x2,
            so no window is larger than the grid the model was trained on) or ``"RxC"``.
            None (default): the schedule's (official: 2x2; measured: native).
        window_seed: seed of the MSW-MSA window shifts. Each UNet call draws its shifts
            from a private generator seeded with this and the call's step index, so the
            shifts repeat exactly for the same run and never touch the global RNG.
        scheduler: for a bare UNet, the scheduler whose ``timesteps`` the calls follow
            (RAU-Net needs the step index). A run starts at its ``begin_index`` or, without
            one, at the first call after ``set_timesteps``. Ignored for a pipeline, whose
            own scheduler is used.
        reference: the guided mode: native-size latents (batch, channels, height, width) in
            the pipeline's latent space (``pipe(..., output_type="latent").images``). Every
            UNet call larger than them has the low frequencies of its predicted x0 locked to
            theirs, upscaled, while the noise is high (:mod:`hidiff.diffusers.guide`), so a
            2-4x larger image keeps their composition. None (default): no lock.
        guide: the lock's strength, exponent, low-pass and cutoff; None (default) takes the
            ComfyUI node's defaults (:class:`~hidiff.core.settings.GuideSettings`).
    """

    gate_native: bool = True
    native_resolution: int | None = None
    turbo: bool = False
    aggressive: bool | None = None
    text_to_image_controlnet: bool | None = None
    schedule: str = "official"
    window_grid: str | None = None
    window_seed: int = 0
    scheduler: Any = None
    reference: Any = None
    guide: GuideSettings | None = None

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> HiDiffusionOptions:
        """Build from ``**options``; an unknown name is a TypeError listing the valid ones."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(
                f"apply_hidiffusion() got unknown option(s) {', '.join(unknown)}; valid options: {', '.join(names)}"
            )
        result = cls(**options)
        result.check()
        return result

    def check(self) -> None:
        """Refuse values that cannot work, naming the option."""
        if self.native_resolution is not None and (
            isinstance(self.native_resolution, bool) or not isinstance(self.native_resolution, int)
        ):
            raise TypeError(f"native_resolution must be a whole number of pixels, got {self.native_resolution!r}")
        if self.native_resolution is not None and self.native_resolution < 64:
            raise ValueError(f"native_resolution must be at least 64 pixels, got {self.native_resolution}")
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_NAMES)}, got {self.schedule!r}")
        if self.window_grid is not None:
            parse_window_grid(self.window_grid)
        if isinstance(self.window_seed, bool) or not isinstance(self.window_seed, int):
            raise TypeError(f"window_seed must be an integer, got {self.window_seed!r}")
        if self.guide is not None and not isinstance(self.guide, GuideSettings):
            raise TypeError(f"guide must be a hidiff.core.settings.GuideSettings, got {type(self.guide).__name__}")
        if self.scheduler is not None and not hasattr(self.scheduler, "timesteps"):
            raise TypeError(f"scheduler must be a diffusers scheduler (with .timesteps), got {type(self.scheduler)}")


@dataclass
class CallState:
    """What one UNet call needs to share between its hooks.

    Args:
        rad: RAD/RAU act in this call.
        pool: the pooling and its restore act in this call.
        windows: MSW-MSA acts in this call.
        shifts: the window shift index of each windowed attn1, in install order.
        skip_sizes: {level: size of that level's last skip}, the exact target of the
            upsampler that returns to the level (recorded from the Downsample's input).
        pooled_from: the size before pooling, restored in the mirrored up block.
        grids: {transformer name: (height, width)} of the token grid it was called with.
        down_residuals: ControlNet down residuals still to be added to the skips.
        mid_residual: the ControlNet mid residual, added to the mid block's output.
    """

    rad: bool = False
    pool: bool = False
    windows: bool = False
    shifts: tuple[int, ...] = ()
    skip_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    pooled_from: tuple[int, int] | None = None
    grids: dict[str, tuple[int, int]] = field(default_factory=dict)
    down_residuals: list[torch.Tensor] | None = None
    mid_residual: torch.Tensor | None = None

    @property
    def resizing(self) -> bool:
        """Whether feature maps leave their stock sizes in this call."""
        return self.rad or self.pool

    def __repr__(self) -> str:
        parts = [f"rad={self.rad}", f"pool={self.pool}", f"windows={self.windows}", f"skip_sizes={self.skip_sizes}"]
        if self.pooled_from is not None:
            parts.append(f"pooled_from={self.pooled_from}")
        if self.down_residuals is not None:
            parts.append(f"down_residuals={[tuple(r.shape) for r in self.down_residuals]}")
        return f"CallState({', '.join(parts)})"
