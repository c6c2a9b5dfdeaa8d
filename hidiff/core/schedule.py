"""When an effect is active: time ranges as sigma intervals, and the step of a sigma.

Every effect of the pack is gated by the noise level (sigma) of the current model call,
never by counting calls: the number of UNet calls per step changes with CFG batching,
second-order samplers, PAG/SAG passes and memory pressure, and a counter outlives an
interrupted run. Users enter times as sampling percent, timestep or raw sigma; all three
become one inclusive sigma interval at patch time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

MAX_TIMESTEP = 999
_REL_TOLERANCE = 1e-5
"""Sigmas of the sampler and of percent_to_sigma differ by float noise; bounds are
widened by this relative amount so a step that sits exactly on a bound is inside."""


class TimeMode(str, Enum):
    """How start_time and end_time are written by the user."""

    PERCENT = "percent"
    TIMESTEP = "timestep"
    SIGMA = "sigma"

    def __str__(self) -> str:
        return self.value


TIME_MODES = tuple(mode.value for mode in TimeMode)


@dataclass(frozen=True)
class SigmaRange:
    """An inclusive interval of sigmas, ``start`` (high noise) to ``end`` (low noise).

    ``disabled`` marks the documented "off" value: a start at the very end of sampling.
    """

    start: float
    end: float
    disabled: bool = False

    def contains(self, sigma: float) -> bool:
        """Whether a model call at ``sigma`` lies inside the range (bounds included)."""
        if self.disabled:
            return False
        upper = self.start * (1 + _REL_TOLERANCE)
        lower = self.end * (1 - _REL_TOLERANCE)
        return lower <= sigma <= upper


ALWAYS = SigmaRange(float("inf"), 0.0)


class TimeRangeError(ValueError):
    """A start/end pair that cannot describe a time range."""


def _check_bounds(name: str, value: float, low: float, high: float | None, mode: TimeMode) -> None:
    if value != value or value < low or (high is not None and value > high):  # noqa: PLR0124 (NaN)
        valid = f"{low:g} to {high:g}" if high is not None else f"at least {low:g}"
        raise TimeRangeError(f"{name} = {value:g} is out of range: in {mode} mode it must be {valid}")


def sigma_range(
    mode: TimeMode | str,
    start: float,
    end: float,
    percent_to_sigma: Callable[[float], float],
    names: tuple[str, str] = ("start_time", "end_time"),
) -> SigmaRange:
    """Convert a user's start/end in ``mode`` to an inclusive :class:`SigmaRange`.

    ``percent`` is the model's sampling percent (0 = most noise, 1 = none), mapped with
    the model's own ``percent_to_sigma``, not a fraction of steps. ``timestep`` is 999
    (most noise) to 0. ``sigma`` is raw, high to low. A start at the very end of
    sampling (percent 1, timestep 0, sigma 0) switches the effect off, whatever the end;
    any other start that comes after the end is an error naming both inputs.
    """
    try:
        mode = TimeMode(mode)
    except ValueError:
        raise TimeRangeError(f"time_mode = {mode!r} is not valid; use one of {', '.join(TIME_MODES)}") from None
    start_name, end_name = names
    if mode is TimeMode.SIGMA:
        _check_bounds(start_name, start, 0.0, None, mode)
        _check_bounds(end_name, end, 0.0, None, mode)
        start_pct, end_pct = None, None
        start_sigma, end_sigma = float(start), float(end)
    else:
        high = 1.0 if mode is TimeMode.PERCENT else float(MAX_TIMESTEP)
        _check_bounds(start_name, start, 0.0, high, mode)
        _check_bounds(end_name, end, 0.0, high, mode)
        if mode is TimeMode.PERCENT:
            start_pct, end_pct = float(start), float(end)
        else:
            start_pct, end_pct = 1.0 - start / MAX_TIMESTEP, 1.0 - end / MAX_TIMESTEP
        start_sigma, end_sigma = percent_to_sigma(start_pct), percent_to_sigma(end_pct)
    off = start_pct == 1.0 if start_pct is not None else start_sigma == 0.0
    if off:
        return SigmaRange(start_sigma, end_sigma, disabled=True)
    if start_sigma < end_sigma:
        raise TimeRangeError(
            f"{start_name} = {start:g} comes after {end_name} = {end:g} in {mode} mode "
            f"({'higher percent is later' if mode is TimeMode.PERCENT else 'lower is later'}); "
            f"swap them, or set {start_name} to the end of sampling to switch the effect off"
        )
    return SigmaRange(start_sigma, end_sigma)


def current_sigma(sigmas: torch.Tensor | float | None) -> float | None:
    """The sigma of a model call from ComfyUI-style ``sigmas`` (per-sample tensor).

    Samples of one batch share a sigma in every stock sampler; the max is taken so a
    mixed batch counts as its noisiest member.
    """
    if sigmas is None:
        return None
    if isinstance(sigmas, (int, float)):
        return float(sigmas)
    return float(sigmas.detach().max().cpu())


def step_index(sigma: float, sample_sigmas: Sequence[float] | torch.Tensor | None) -> int:
    """The sampling step a call at ``sigma`` belongs to, from the run's sigma schedule.

    Step i covers sigmas in (sample_sigmas[i+1], sample_sigmas[i]]; intermediate calls of
    second-order samplers therefore belong to the step they refine. Without a schedule
    (a model called outside a sampler) every call is step 0.
    """
    if sample_sigmas is None:
        return 0
    values = [float(s) for s in (sample_sigmas.tolist() if isinstance(sample_sigmas, torch.Tensor) else sample_sigmas)]
    tolerance = sigma * _REL_TOLERANCE
    index = 0
    for i, boundary in enumerate(values[1:]):
        if sigma <= boundary + tolerance:
            index = i + 1
        else:
            break
    return min(index, max(len(values) - 2, 0))
