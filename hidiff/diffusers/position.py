"""Where a UNet call sits in its run: the step index from the call's timestep.

The official code counts UNet calls per module and resets at ``pipe._num_timesteps``;
an interrupted run leaves the counters behind and switches RAU-Net off for good. Here
every call is located afresh from its timestep in ``scheduler.timesteps``:

* The run is the part of the schedule from its start to the end: N (the steps the run
  makes) is ``len(scheduler.timesteps) - start``. That is the official
  ``pipe._num_timesteps`` for text-to-image, for img2img/inpaint with strength < 1 (a
  suffix) and for second-order schedulers such as Heun (2N-1 entries). It is read from
  the scheduler alone, so pipelines that share the UNet (``from_pipe``) cannot leave a
  stale count behind. (SDXL's ``denoising_end`` runs a prefix; there the windows are
  fractions of the whole schedule, where the official counters use the prefix length.)
* The run starts at ``scheduler.begin_index`` where the scheduler has one (img2img sets
  it). Schedulers without it (DDIM, DDPM, PNDM) get the position of the first call made
  with the current ``scheduler.timesteps`` tensor: every pipeline call builds a new one in
  ``set_timesteps``, so this anchor belongs to one run and an interrupted run leaves
  nothing that the next run reads.
* A timestep that occurs twice (second-order schedulers) is told apart by the
  scheduler's own ``step_index``, the position of the call it is about to step.

Nothing here counts calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RunPosition:
    """Step ``step`` (0-based) of a run of ``total`` UNet steps."""

    step: int
    total: int


def timestep_value(timestep: Any) -> float:
    """The timestep of a call as a float; a per-sample tensor counts as its noisiest entry."""
    if isinstance(timestep, torch.Tensor):
        return float(timestep.detach().reshape(-1).max().cpu())
    return float(timestep)


def matching_positions(values: list[float], timestep: float) -> list[int]:
    """Positions in ``values`` equal to ``timestep`` (the nearest ones if none is equal)."""
    if not values:
        return []
    best = min(abs(v - timestep) for v in values)
    tolerance = best + 1e-6 * max(1.0, abs(timestep))
    return [i for i, v in enumerate(values) if abs(v - timestep) <= tolerance]


def pick_position(candidates: list[int], step_index: int | None) -> int:
    """One of the positions of a repeated timestep: the scheduler's ``step_index`` if it
    is one of them, else the first."""
    if step_index is not None and step_index in candidates:
        return step_index
    return candidates[0]


def run_position(position: int, begin: int, length: int) -> RunPosition:
    """The step within the run that starts at ``begin`` of a schedule of ``length`` entries."""
    total = max(length - begin, 1)
    return RunPosition(min(max(position - begin, 0), total - 1), total)


class ScheduleReader:
    """Reads the run position of each call from a scheduler, caching the schedule's values.

    Holds only the current ``scheduler.timesteps`` tensor, its values and the run anchor
    (see the module docstring); a new tensor (a new pipeline call) replaces all three.
    """

    def __init__(self) -> None:
        self._timesteps: torch.Tensor | None = None
        self._values: list[float] = []
        self._anchor: int | None = None

    def locate(self, timestep: Any, scheduler: Any) -> RunPosition | None:
        """The position of a call at ``timestep``, or None when the scheduler has no timesteps."""
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return None
        if timesteps is not self._timesteps:
            self._timesteps = timesteps
            self._values = [float(v) for v in torch.as_tensor(timesteps).detach().cpu().reshape(-1).tolist()]
            self._anchor = None
        candidates = matching_positions(self._values, timestep_value(timestep))
        position = pick_position(candidates, _optional_int(scheduler, "step_index"))
        if self._anchor is None:
            self._anchor = position
        begin = _optional_int(scheduler, "begin_index")
        return run_position(position, self._anchor if begin is None else begin, len(self._values))


def _optional_int(obj: Any, name: str) -> int | None:
    value = getattr(obj, name, None)
    return int(value) if value is not None else None
