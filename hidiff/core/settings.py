"""The typed settings of one application of each effect, as the adapters take them.

Blocks are tuples of block numbers, times are in ``time_mode`` units (percent, timestep or
sigma), methods are the names :mod:`hidiff.core.raunet` resamples with. The ComfyUI adapter
builds them from widgets and YAML (and checks them there, naming the input); the auto plan
(:mod:`hidiff.core.plan`) builds them from the model's structure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .windows import OFFICIAL_GRID

CONTROLNET_RESIZE_MODE = "bicubic"
"""How ControlNet / T2I-Adapter residuals are fitted to RAU-Net's shrunk maps by default."""


@dataclass(frozen=True)
class RauNetSettings:
    """One RAU-Net application, before it meets a model."""

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
    controlnet_resize_mode: str = CONTROLNET_RESIZE_MODE
    verbose: bool = False

    @property
    def factor_w(self) -> float:
        """The CA width factor (the height factor unless set separately)."""
        return self.ca_downscale_factor if self.ca_downscale_factor_w is None else self.ca_downscale_factor_w


@dataclass(frozen=True)
class MswMsaSettings:
    """One MSW-MSA application, before it meets a model."""

    input_blocks: tuple[int, ...]
    middle_blocks: tuple[int, ...]
    output_blocks: tuple[int, ...]
    time_mode: str
    start_time: float
    end_time: float
    shift_mode: str = "distinct"
    verbose: bool = False
    window_grid: str = OFFICIAL_GRID
    native_resolution: int | None = None

    def blocks(self, kind: str) -> tuple[int, ...]:
        """The chosen blocks of one kind."""
        return {"input": self.input_blocks, "middle": self.middle_blocks, "output": self.output_blocks}[kind]


@dataclass(frozen=True)
class GuideSettings:
    """The guided hires fix's low-band lock (:mod:`hidiff.core.guide`)."""

    strength: float = 1.0
    """``g`` at pure noise; 0 switches the lock off."""
    exponent: float = 3.0
    """How fast ``g`` falls with the noise level (DemoFusion's alpha1: 3)."""
    lowpass: str = "resize"
    """``resize`` or ``fft`` (:data:`hidiff.core.guide.LOWPASS_MODES`)."""
    cutoff: float = 1.0
    """The locked band as a fraction of the reference's own (FAM's box uses 0.5); the rest is free."""
    views: float = 1.0
    """The native views' share in the large pass's prediction (:mod:`hidiff.core.native_views`);
    0: off (the large call alone), 1: the views alone (the large call is skipped)."""
    views_blur: float = 2.0
    """The Gaussian sigma of the views' input at pure noise, in latent pixels (DemoFusion's: 1)."""
    views_degrain: float = 1.0
    """The Gaussian sigma, in view pixels, of the per-view offsets taken out of the views' prediction."""
