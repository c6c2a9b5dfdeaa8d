"""Per-run state: created when sampling starts, gone when it ends or fails.

An ``OUTER_SAMPLE`` wrapper (one per effect, under the effect's own key) builds a
:class:`RunState` from the sampling seed and sigma schedule, and puts it into the
guider's per-run copy of ``transformer_options``. Every block and attention patch of
that run finds it there. Nothing is kept on the model, the patch objects or the module,
so an interrupted run leaves nothing behind, and the same seed gives the same result in
any process.

The states of all effects of one run share a :class:`SigmaReader`, so the current sigma
is copied from the device once per UNet call, not once per patched block and effect.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable
from typing import Any

import torch
from comfy.patcher_extension import WrappersMP

from ..core.schedule import current_sigma, step_index
from ..core.windows import distinct_shift_sequence, independent_shift_sequence
from ..log import logger

_SEED_SALT = 0x48694469  # "HiDi": our generator never shares a stream with the sampler's.


def stable_hash(*parts: Hashable) -> int:
    """A process-independent hash (Python's ``hash`` of str is salted per process)."""
    return zlib.crc32(repr(parts).encode())


class SigmaReader:
    """The sigma of the current model call, read from its ``sigmas`` tensor once.

    ComfyUI gives every patch of one UNet call the same ``transformer_options["sigmas"]``
    tensor (attention patches get a shallow copy of the dict, so the same object too),
    and samplers hand the model a new tensor for each sigma (``sigmas[i] * s_in``), never
    one changed in place. Reading it means a device-to-host copy (a GPU sync), so the
    value is kept with a reference to the tensor it came from and read again only when
    another tensor comes. The reference is compared with ``is``: it keeps the tensor
    alive, so a new tensor can never take its place at the same address.
    """

    def __init__(self) -> None:
        self._sigmas: torch.Tensor | None = None
        self._value: float | None = None

    def __call__(self, sigmas: torch.Tensor | float | None) -> float | None:
        if not isinstance(sigmas, torch.Tensor):
            return current_sigma(sigmas)
        if sigmas is not self._sigmas:
            self._value = current_sigma(sigmas)
            self._sigmas = sigmas
        return self._value


class RunState:
    """What one effect remembers during one sampling run.

    Args:
        effect: the effect's key, used in messages.
        seed: the sampling seed (None when the sampler gave none).
        sample_sigmas: the run's sigma schedule, used to place calls on steps.
        sigma_reader: the run's shared :class:`SigmaReader` (a new one when None).
    """

    def __init__(
        self,
        effect: str,
        seed: int | None,
        sample_sigmas: torch.Tensor | None,
        sigma_reader: SigmaReader | None = None,
    ) -> None:
        self.effect = effect
        self.seed = 0 if seed is None else int(seed)
        self.schedule = [float(s) for s in sample_sigmas.tolist()] if sample_sigmas is not None else None
        self.sigma = sigma_reader if sigma_reader is not None else SigmaReader()
        self._told: set[str] = set()
        self.memo: dict[str, Any] = {}
        """What a patch found out once in this run and need not find out again."""
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


BeforeRun = Callable[[Any, Any, Any, RunState], None]
"""``check(guider, noise, sampler, state)``, run when sampling starts, before any step; it may raise."""


def outer_sample_wrapper(effect: str, before_run: BeforeRun | None = None) -> Callable[..., Any]:
    """An ``OUTER_SAMPLE`` wrapper that gives each sampling run a fresh :class:`RunState`.

    The states of the effects of one run share one :class:`SigmaReader`: the first
    wrapper to run makes it, the others find it on the states already there.
    ``before_run`` checks the run before any step (the latent and schedule are known).
    """

    def wrapper(
        executor: Any, noise: Any, latent_image: Any, sampler: Any, sigmas: Any, *args: Any, **kwargs: Any
    ) -> Any:
        seed = kwargs.get("seed", args[-1] if len(args) >= 4 else None)
        options = executor.class_obj.model_options.setdefault("transformer_options", {})
        shared = next((value.sigma for value in options.values() if isinstance(value, RunState)), None)
        state = options[effect] = RunState(effect, seed, sigmas, shared)
        try:
            if before_run is not None:
                before_run(executor.class_obj, noise, sampler, state)
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            options.pop(effect, None)

    wrapper.hidiffusion_effect = effect  # type: ignore[attr-defined]
    wrapper.before_run = before_run  # type: ignore[attr-defined]
    return wrapper


def install_run_state(model: Any, effect: str, before_run: BeforeRun | None = None) -> None:
    """Register (or re-register) the run-state wrapper of ``effect`` on a cloned patcher."""
    model.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, effect)
    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, effect, outer_sample_wrapper(effect, before_run))


def run_state(options: dict, effect: str) -> RunState | None:
    """The current run's state of ``effect``, from transformer_options / extra_options."""
    state = options.get(effect)
    return state if isinstance(state, RunState) else None


def sigma_of(options: dict, effect: str) -> float | None:
    """The sigma of the current model call, from transformer_options / extra_options.

    Read through the run's shared :class:`SigmaReader` (one device read per UNet call);
    a call outside a sampler (no run state of ``effect``) reads the tensor itself.
    """
    state = run_state(options, effect)
    sigmas = options.get("sigmas")
    return current_sigma(sigmas) if state is None else state.sigma(sigmas)
