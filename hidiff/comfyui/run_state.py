"""Per-run state: created when sampling starts, gone when it ends or fails.

An ``OUTER_SAMPLE`` wrapper (one per effect, under the effect's own key) builds a
:class:`RunState` from the sampling seed and sigma schedule, and puts it into the
guider's per-run copy of ``transformer_options``. Every block and attention patch of
that run finds it there. Nothing is kept on the model, the patch objects or the module,
so an interrupted run leaves nothing behind, and the same seed gives the same result in
any process.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable
from typing import Any

import torch
from comfy.patcher_extension import WrappersMP

from ..core.schedule import step_index
from ..core.windows import distinct_shift_sequence, independent_shift_sequence
from ..log import logger

_SEED_SALT = 0x48694469  # "HiDi": our generator never shares a stream with the sampler's.


def stable_hash(*parts: Hashable) -> int:
    """A process-independent hash (Python's ``hash`` of str is salted per process)."""
    return zlib.crc32(repr(parts).encode())


class RunState:
    """What one effect remembers during one sampling run.

    Args:
        effect: the effect's key, used in messages.
        seed: the sampling seed (None when the sampler gave none).
        sample_sigmas: the run's sigma schedule, used to place calls on steps.
    """

    def __init__(self, effect: str, seed: int | None, sample_sigmas: torch.Tensor | None) -> None:
        self.effect = effect
        self.seed = 0 if seed is None else int(seed)
        self.schedule = [float(s) for s in sample_sigmas.tolist()] if sample_sigmas is not None else None
        self._told: set[str] = set()
        self._shifts: dict[Hashable, list[int]] = {}

    def __repr__(self) -> str:
        steps = None if self.schedule is None else len(self.schedule) - 1
        return f"RunState({self.effect!r}, seed={self.seed}, steps={steps}, told={len(self._told)})"

    def tell_once(self, message: str, level: str = "warning") -> None:
        """Log ``message`` the first time it comes up in this run."""
        if message not in self._told:
            self._told.add(message)
            getattr(logger, level)(message)

    def step_of(self, sigma: float) -> int:
        """The step of this run's schedule that a call at ``sigma`` belongs to."""
        return step_index(sigma, self.schedule)

    def shift_index(self, block: Hashable, sigma: float, mode: str) -> int:
        """The MSW-MSA shift k for ``block`` at the step of ``sigma``.

        Each block has its own sequence over the run's steps, drawn from a generator
        seeded by the sampling seed and the block, so every call of a step (cond and
        uncond, split batches, second-order evaluations) uses the same windows, and
        the global RNG is never touched.
        """
        if mode == "none":
            return 0
        step = self.step_of(sigma)
        sequence = self._shifts.get(block)
        if sequence is None or step >= len(sequence):
            seed = ((self.seed ^ _SEED_SALT) + stable_hash(block)) & 0xFFFF_FFFF_FFFF_FFFF
            generator = torch.Generator(device="cpu").manual_seed(seed)
            length = max(step + 1, len(self.schedule) if self.schedule else 1)
            draw = distinct_shift_sequence if mode == "distinct" else independent_shift_sequence
            sequence = draw(generator, length)
            self._shifts[block] = sequence
        return sequence[step]


def outer_sample_wrapper(effect: str) -> Callable[..., Any]:
    """An ``OUTER_SAMPLE`` wrapper that gives each sampling run a fresh :class:`RunState`."""

    def wrapper(
        executor: Any, noise: Any, latent_image: Any, sampler: Any, sigmas: Any, *args: Any, **kwargs: Any
    ) -> Any:
        seed = kwargs.get("seed", args[-1] if len(args) >= 4 else None)
        options = executor.class_obj.model_options.setdefault("transformer_options", {})
        options[effect] = RunState(effect, seed, sigmas)
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            options.pop(effect, None)

    wrapper.hidiffusion_effect = effect  # type: ignore[attr-defined]
    return wrapper


def install_run_state(model: Any, effect: str) -> None:
    """Register (or re-register) the run-state wrapper of ``effect`` on a cloned patcher."""
    model.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, effect)
    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, effect, outer_sample_wrapper(effect))


def run_state(options: dict, effect: str) -> RunState | None:
    """The current run's state of ``effect``, from transformer_options / extra_options."""
    state = options.get(effect)
    return state if isinstance(state, RunState) else None
