"""Per-run state: one holder per sampling run, one sigma read per UNet call.

Whatever effects a model carries, the pack registers two wrappers under one key,
:data:`PACK`, as ComfyUI's own EasyCache does:

* an ``OUTER_SAMPLE`` wrapper (:class:`RunWrapper`) that makes the run's :class:`PackRun`
  from the sampling seed and sigma schedule, with one :class:`RunState` per effect, puts it
  into the guider's per-run ``transformer_options``, runs each effect's check before the
  first step, and takes it away in ``finally``;
* a ``DIFFUSION_MODEL`` wrapper (:class:`ReadSigmaOnce`) that reads the sigma of each UNet
  call once (a device-to-host copy, so a GPU sync) and hands the float to every block and
  attention patch of that call in its ``transformer_options``.

A model can carry the native-size gate (:func:`install_native_gate`, the auto node's):
every UNet call whose own latent is at or below the native size
(:func:`hidiff.core.gate.at_or_below_native`) then runs with none of the pack's patches,
exactly as the unpatched model, and the run says so once.

Nothing is kept on the model, the patch objects or the module, so an interrupted run
leaves nothing behind, and the same seed gives the same result in any process.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch
from comfy.model_sampling import CONST
from comfy.patcher_extension import WrappersMP

from ..core.gate import at_or_below_native, gated_message
from ..core.raunet import sigma_to_percent
from ..core.schedule import current_sigma, step_index
from ..core.windows import shift_sequence
from ..log import logger
from .patch_base import SharedPatch, effect_of

PACK = "hidiffusion"
"""The wrapper key of the pack's run wrappers, and the ``transformer_options`` key of the run."""
SIGMA_KEY = "hidiffusion_sigma"
"""The ``transformer_options`` key of the current UNet call's sigma (a float, or None)."""
OPTIONS_ARG = 5
"""Where ``transformer_options`` sits in ``UNetModel.forward(x, timesteps, context, y, control, ...)``."""
GUIDE_CALL_KEY = "hidiffusion_guide_call"
"""Set in the options of a native-size call the pack makes to guide a large one."""

_SEED_SALT = 0x48694469  # "HiDi": our generator never shares a stream with the sampler's.


def stable_hash(*parts: Hashable) -> int:
    """A process-independent hash (Python's ``hash`` of str is salted per process)."""
    return zlib.crc32(repr(parts).encode())


class PackRun:
    """What the pack remembers during one sampling run, shared by its effects.

    Args:
        seed: the sampling seed (None when the sampler gave none).
        sample_sigmas: the run's sigma schedule, used to place calls on steps.
        effects: the effects on the model, each of which gets its own :class:`RunState`.
        native_latent: the native latent side of the model's gate, or None when it has none.
    """

    def __init__(
        self,
        seed: int | None,
        sample_sigmas: torch.Tensor | None,
        effects: Iterable[str],
        native_latent: int | None = None,
    ) -> None:
        self.seed = 0 if seed is None else int(seed)
        self.schedule = [float(s) for s in sample_sigmas.tolist()] if sample_sigmas is not None else None
        self.effects = {effect: RunState(self, effect) for effect in effects}
        self.native_latent = native_latent
        self._told: set[str] = set()

    def gates(self, height: int, width: int) -> bool:
        """Whether a call (or the run) with a ``height`` x ``width`` latent runs unpatched."""
        return self.native_latent is not None and at_or_below_native(height, width, self.native_latent)

    def tell_once(self, message: str, level: str = "warning") -> None:
        """Log ``message`` the first time it comes up in this run."""
        if message not in self._told:
            self._told.add(message)
            getattr(logger, level)(message)

    def __repr__(self) -> str:
        steps = None if self.schedule is None else len(self.schedule) - 1
        return f"PackRun(seed={self.seed}, steps={steps}, effects={sorted(self.effects)})"


class RunState:
    """What one effect remembers during one sampling run (its part of the :class:`PackRun`)."""

    def __init__(self, run: PackRun, effect: str) -> None:
        self.run = run
        self.effect = effect
        self.memo: dict[str, Any] = {}
        """What a patch found out once in this run and need not find out again."""
        self._shifts: dict[Hashable, list[int]] = {}
        self._per_sigma: dict[tuple[str, float], Any] = {}

    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def schedule(self) -> list[float] | None:
        return self.run.schedule

    def __repr__(self) -> str:
        return f"RunState({self.effect!r}, {self.run!r})"

    def tell_once(self, message: str, level: str = "warning") -> None:
        """Log ``message`` the first time it comes up in this run (whichever effect says it)."""
        self.run.tell_once(message, level)

    def step_of(self, sigma: float) -> int:
        """The step of this run's schedule that a call at ``sigma`` belongs to."""
        return step_index(sigma, self.schedule)

    def per_sigma(self, name: str, sigma: float, compute: Callable[[float], Any]) -> Any:
        """``compute(sigma)``, worked out once per sigma of this run: every call of a step
        (cond and uncond, split batches) shares the step's sigma, so it runs once a step
        (and once for each intermediate sigma of a second-order sampler)."""
        key = (name, sigma)
        if key not in self._per_sigma:
            self._per_sigma[key] = compute(sigma)
        return self._per_sigma[key]

    def sampling_percent(self, sigma: float, percent_to_sigma: Callable[[float], float]) -> float:
        """The sampling percent of ``sigma`` on the model's own noise schedule
        (``model_sampling.percent_to_sigma``), once per sigma of this run."""
        return self.per_sigma("sampling_percent", sigma, lambda s: sigma_to_percent(s, percent_to_sigma))

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
            length = max(step + 1, len(self.schedule) if self.schedule else 1)
            sequence = shift_sequence(seed, length, mode)
            self._shifts[block] = sequence
        return sequence[step]


BeforeRun = Callable[[Any, Any, Any, RunState], None]
"""``check(guider, noise, sampler, state)``, run when sampling starts, before any step; it may raise."""


class RunWrapper(SharedPatch):
    """The pack's ``OUTER_SAMPLE`` wrapper: one :class:`PackRun` per sampling run.

    Args:
        checks: ``(effect, check)`` for each effect on the model, in the order the effects
            were applied; ``check`` (or None) looks at the run before any step (the latent
            and schedule are known) and may refuse it.
        native_latent: the native latent side of the model's gate (None: no gate). A run
            whose latent is at or below it skips the checks: every call of it runs unpatched.
    """

    hidiffusion_effect = PACK

    def __init__(self, checks: tuple[tuple[str, BeforeRun | None], ...] = (), native_latent: int | None = None) -> None:
        self.checks = checks
        self.native_latent = native_latent

    def __repr__(self) -> str:
        return f"RunWrapper(effects={[effect for effect, _ in self.checks]}, native_latent={self.native_latent})"

    def with_effect(self, effect: str, check: BeforeRun | None) -> RunWrapper:
        """This wrapper with ``effect`` (re-)registered last, with ``check``."""
        checks = tuple(item for item in self.checks if item[0] != effect) + ((effect, check),)
        return RunWrapper(checks, self.native_latent)

    def with_gate(self, native_latent: int | None) -> RunWrapper:
        """This wrapper with the native-size gate at ``native_latent`` (None: no gate)."""
        return RunWrapper(self.checks, native_latent)

    def check_of(self, effect: str) -> BeforeRun | None:
        """The check registered for ``effect``."""
        return dict(self.checks).get(effect)

    def __call__(
        self, executor: Any, noise: Any, latent_image: Any, sampler: Any, sigmas: Any, *args: Any, **kwargs: Any
    ) -> Any:
        seed = kwargs.get("seed", args[-1] if len(args) >= 4 else None)
        options = executor.class_obj.model_options.setdefault("transformer_options", {})
        run = options[PACK] = PackRun(seed, sigmas, (effect for effect, _ in self.checks), self.native_latent)
        shape = getattr(noise, "shape", ())
        gated = len(shape) >= 4 and run.gates(int(shape[-2]), int(shape[-1]))
        try:
            for effect, check in self.checks:
                if check is not None and not gated:
                    check(executor.class_obj, noise, sampler, run.effects[effect])
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            options.pop(PACK, None)


class ReadSigmaOnce(SharedPatch):
    """The pack's ``DIFFUSION_MODEL`` wrapper: the call's sigma, read once, for every patch,
    and the native-size gate.

    ComfyUI gives every patch of one UNet call the same ``transformer_options`` dict
    (attention patches get a shallow copy of it), so the float put there before the call
    reaches them all; it is taken out again when the call ends.

    When the run's model carries the gate and this call's latent is at or below the native
    size, the call gets a copy of its options without any of the pack's patches (so the
    UNet runs exactly the stock code) and no sigma (so the pack's inner wrappers, the
    ControlNet bridge, hand it on untouched); the run is told once.
    """

    hidiffusion_effect = PACK

    def __repr__(self) -> str:
        return "ReadSigmaOnce()"

    def __call__(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        options = kwargs.get("transformer_options", args[OPTIONS_ARG] if len(args) > OPTIONS_ARG else None)
        if not isinstance(options, dict):
            return executor(*args, **kwargs)
        run = options.get(PACK)
        x = args[0] if args else kwargs.get("x")
        if isinstance(run, PackRun) and x is not None and x.ndim >= 4 and run.gates(x.shape[-2], x.shape[-1]):
            if not options.get(GUIDE_CALL_KEY):
                run.tell_once(gated_message(int(x.shape[-2]), int(x.shape[-1]), run.native_latent), level="info")
            args, kwargs = _with_options(args, kwargs, without_pack_patches(options))
            return executor(*args, **kwargs)
        options[SIGMA_KEY] = current_sigma(options.get("sigmas"))
        try:
            return executor(*args, **kwargs)
        finally:
            options.pop(SIGMA_KEY, None)


def _with_options(args: tuple, kwargs: dict, options: dict) -> tuple[tuple, dict]:
    """The call's arguments with ``transformer_options`` replaced, wherever it was passed."""
    if "transformer_options" in kwargs or len(args) <= OPTIONS_ARG:
        return args, {**kwargs, "transformer_options": options}
    return (*args[:OPTIONS_ARG], options, *args[OPTIONS_ARG + 1 :]), kwargs


def guide_call_options(options: dict) -> dict:
    """A copy of a call's options for a native-size call the pack makes itself to guide a
    large one (attention maps, native views): none of the pack's patches, as the native gate
    runs it, and the gate does not tell the run about it (the user made no such call)."""
    return {**without_pack_patches(options), GUIDE_CALL_KEY: True}


def without_pack_patches(options: dict) -> dict:
    """A copy of a call's ``transformer_options`` with none of the pack's block, attention
    and handler patches (other nodes' patches stay, in their order) and no sigma for the
    pack's wrappers. The lists and dicts it changes are new; ``options`` is untouched."""
    stripped = {**options, SIGMA_KEY: None}
    if "patches" in options:
        stripped["patches"] = {
            name: [entry for entry in entries if not effect_of(entry[1] if isinstance(entry, tuple) else entry)]
            for name, entries in options["patches"].items()
        }
    if "patches_replace" in options:
        stripped["patches_replace"] = {
            name: {key: patch for key, patch in table.items() if not effect_of(patch)}
            for name, table in options["patches_replace"].items()
        }
    return stripped


def run_wrapper(model: Any) -> RunWrapper | None:
    """The pack's ``OUTER_SAMPLE`` wrapper on a patcher, if any."""
    found = [w for w in model.get_wrappers(WrappersMP.OUTER_SAMPLE, PACK) if isinstance(w, RunWrapper)]
    return found[-1] if found else None


def install_run_state(model: Any, effect: str, before_run: BeforeRun | None = None) -> None:
    """Register ``effect`` (and ``before_run``) with the pack's run wrappers on a cloned patcher.

    The first effect adds both wrappers; later ones replace the ``OUTER_SAMPLE`` wrapper by
    one that knows them too. The ``DIFFUSION_MODEL`` wrapper stays where it was first put,
    ahead of wrappers the pack adds after it (the ControlNet bridge reads its float).
    """
    wrapper = (run_wrapper(model) or RunWrapper()).with_effect(effect, before_run)
    model.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, PACK)
    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, PACK, wrapper)
    if not model.get_wrappers(WrappersMP.DIFFUSION_MODEL, PACK):
        model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, PACK, ReadSigmaOnce())


def install_native_gate(model: Any, native_latent: int) -> None:
    """Gate a patched clone per call: any UNet call of a run whose latent's larger side is at
    or below ``native_latent`` runs as the unpatched model. The gate belongs to the model:
    effects added to it later are gated too. Needs the pack's run wrappers (an effect first)."""
    wrapper = run_wrapper(model)
    if wrapper is None:
        raise ValueError("the native gate needs an effect of the pack on the model first")
    model.remove_wrappers_with_key(WrappersMP.OUTER_SAMPLE, PACK)
    model.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, PACK, wrapper.with_gate(native_latent))


def run_state(options: dict, effect: str) -> RunState | None:
    """The current run's state of ``effect``, from transformer_options / extra_options."""
    run = options.get(PACK)
    return run.effects.get(effect) if isinstance(run, PackRun) else None


def sampling_percent(state: RunState | None, sigma: float, percent_to_sigma: Callable[[float], float]) -> float:
    """:meth:`RunState.sampling_percent`, or worked out on the spot outside a run (a direct call)."""
    if state is None:
        return sigma_to_percent(sigma, percent_to_sigma)
    return state.sampling_percent(sigma, percent_to_sigma)


def noise_level(state: RunState | None, sigma: float, model_sampling: Any) -> float:
    """The guided mode's noise level of a call at ``sigma``: 1 at pure noise, 0 when clean.

    On a rectified-flow model (ComfyUI's ``CONST`` sampling: Flux, SD3, AuraFlow) the call's
    input is (1 − sigma)·x0 + sigma·noise, so sigma itself is the share of noise, as the
    diffusers adapter reads it. On the other models 1 − the sampling percent of sigma on the
    model's own schedule. Measured on the Flux-layout lab model at 2-4x (8 seeds,
    docs/quality.md): the unshifted 1 − percent ends the lock and the native views earlier
    (Flux's shift puts sigma above it at every step) and left 3.5-25 eye specks per image
    against 0.6-1.6 with sigma."""
    if isinstance(model_sampling, CONST):
        return min(max(float(sigma), 0.0), 1.0)
    return 1.0 - sampling_percent(state, sigma, model_sampling.percent_to_sigma)


def sigma_of(options: dict) -> float | None:
    """The sigma of the current model call, from transformer_options / extra_options.

    The float :class:`ReadSigmaOnce` put there for this call (None in a call the native
    gate runs unpatched); a UNet called without the pack's wrapper (another node calling
    the layers itself) reads the tensor.
    """
    if SIGMA_KEY in options:
        return options[SIGMA_KEY]
    return current_sigma(options.get("sigmas"))
