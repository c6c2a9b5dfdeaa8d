"""One UNet call, unpatched vs MSW-MSA / RAU-Net / both: time, FLOPs and peak memory.

Each call goes through ``comfy.sample.sample_custom`` with a sampler that calls the
denoiser at the first sigma of a 20-step schedule (sigma_max, where every benchmarked
effect is active). That is the path a real sampling step takes: the patcher is loaded
(object patches exist), every wrapper runs (the pack's per-run state, seeded shifts) and
``transformer_options`` carries the patches, ``sigmas`` and ``sample_sigmas``; calling
``apply_model`` by hand would skip the wrappers. cfg is 1, so a call is one UNet forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..log import logger as log
from . import flops, machine
from .models import ModelSpec, text_conditioning

CONFIG_NAMES = ("off", "msw", "msw-native", "raunet", "both")
DEFAULT_CONFIGS = ("off", "msw", "raunet", "both")
"""``msw-native`` (MSW-MSA with ``window_grid: native``) runs only when asked for."""
WINDOWED_CONFIGS = frozenset({"msw", "msw-native", "both"})
SCHEDULE_STEPS = 20
"""Length of the sigma schedule handed to the sampler (``sample_sigmas``); the benchmarked
call is at its first sigma, so the length only matters for the pack's step bookkeeping."""


@dataclass
class CallResult:
    """Everything measured for one configuration; ``reason`` says why it was not."""

    name: str
    reason: str = ""
    seconds: list[float] = field(default_factory=list)
    flops_by_op: dict[str, int] = field(default_factory=dict)
    attention_expected: int | None = None
    grids: list[dict[str, Any]] = field(default_factory=list)
    rel_diff_vs_off: float | None = None
    peak_memory_bytes: int | None = None
    output: Any = None  # the UNet's noise prediction of the first call, compared with "off"

    @property
    def available(self) -> bool:
        return not self.reason

    @property
    def mean_s(self) -> float | None:
        return sum(self.seconds) / len(self.seconds) if self.seconds else None

    @property
    def total_flops(self) -> int | None:
        return sum(self.flops_by_op.values()) if self.flops_by_op else None

    def flops_of(self, kind: str) -> int:
        return flops.flops_of(self.flops_by_op, kind)


@dataclass(frozen=True)
class Inputs:
    """The fixed inputs every configuration is called with."""

    noise: Any
    latent: Any
    positive: list
    negative: list
    sigmas: Any


def make_inputs(base: Any, spec: ModelSpec, width: int, height: int, batch: int, seed: int) -> Inputs:
    """Noise, an empty latent, random text conditioning and the sigma schedule (``width``/``height`` in px)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    positive = text_conditioning(spec, generator, width, height)
    negative = [[torch.zeros_like(positive[0][0]), dict(positive[0][1])]]
    latent = torch.zeros(batch, 4, height // 8, width // 8)
    noise = torch.randn(latent.shape, generator=generator)
    return Inputs(noise, latent, positive, negative, schedule(base))


def schedule(base: Any) -> Any:
    """The sigma schedule handed to the sampler; every call is at its first sigma."""
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", SCHEDULE_STEPS)


def patched_models(pack: dict, base: Any, spec: ModelSpec, names: list[str]) -> dict[str, Any]:
    """The ModelPatcher of each configuration, or a string saying why there is none.

    The nodes are called as ComfyUI calls them (``execute`` of the registered class), so
    whatever a node does at execute time is part of the benchmark.
    """

    def apply(node: str, model: Any, inputs: dict[str, Any]) -> Any:
        return pack[node].execute(model=model, **(node_defaults(pack[node]) | inputs)).result[0]

    builders: dict[str, Callable[[], Any]] = {
        "off": lambda: base,
        "msw": lambda: apply("ApplyMSWMSAAttention", base, spec.msw),
        "msw-native": lambda: apply("ApplyMSWMSAAttention", base, spec.msw_native),
        "raunet": lambda: apply("ApplyRAUNet", base, spec.raunet),
        "both": lambda: apply("ApplyMSWMSAAttention", apply("ApplyRAUNet", base, spec.raunet), spec.msw),
    }
    models: dict[str, Any] = {}
    for name in names:
        try:
            models[name] = builders[name]()
        except Exception as exc:  # a failing node only drops its rows
            models[name] = f"{type(exc).__name__}: {exc}"
    return models


def node_defaults(node: Any) -> dict[str, Any]:
    """The default of every widget input of a node, as its schema declares them."""
    info = node.GET_NODE_INFO_V1()["input"]
    return {
        name: spec[1]["default"]
        for section in ("required", "optional")
        for name, spec in info.get(section, {}).items()
        if len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]
    }


def measure(
    name: str,
    patcher: Any,
    inputs: Inputs,
    spec: ModelSpec,
    *,
    warmup: int,
    repeats: int,
    count_flops: bool,
    progress: Callable[[str], None],
    shapes_only: bool = True,
) -> CallResult:
    """Warm up, count FLOPs, then time ``repeats`` calls of one configuration.

    The FLOP count runs on shapes only unless ``shapes_only`` is False (see :mod:`.flops`).

    All calls happen inside one ``sample_custom`` run, through a sampler that calls the
    denoiser at the schedule's first sigma; see the module docstring for why.
    """
    import comfy.sample
    import comfy.samplers
    import torch

    result = CallResult(name)
    device = patcher.load_device
    memory = machine.PeakMemory(device)
    windowed = spec.msw_blocks if name in WINDOWED_CONFIGS else frozenset()

    def sampler(model: Any, x: Any, sigmas: Any, extra_args: dict | None = None, **_: Any) -> Any:
        extra_args = dict(extra_args or {})
        sigma = x.new_ones([x.shape[0]]) * sigmas[0]

        def keep_output(out: Any) -> None:
            if result.output is None:
                # denoised = x - sigma * eps, and x ~ sigma * noise dwarfs any change: compare eps.
                result.output = ((x - out) / sigma.view(-1, 1, 1, 1)).float().cpu()

        for i in range(warmup):
            progress(f"{name}: warm-up {i + 1}/{warmup}")
            keep_output(model(x, sigma, **extra_args))
        if count_flops:
            progress(f"{name}: counting FLOPs")
            recorder = flops.AttentionRecorder(windowed, flops.window_grid_of(patcher))
            args = dict(extra_args, model_options=recorder.install(extra_args.get("model_options", {})))
            result.flops_by_op = flops.counted(lambda: model(x, sigma, **args), shapes_only=shapes_only)
            result.attention_expected = recorder.expected_flops()
            result.grids = recorder.grids()
        machine.synchronize(device)
        memory.reset()
        for i in range(repeats):
            progress(f"{name}: timed call {i + 1}/{repeats}")
            start = time.perf_counter()
            out = model(x, sigma, **extra_args)
            machine.synchronize(device)
            result.seconds.append(time.perf_counter() - start)
            keep_output(out)
            progress(f"{name}: {result.seconds[-1]:.3f} s")
        if repeats:
            result.peak_memory_bytes = memory.peak_bytes()
        return x

    with torch.inference_mode():
        comfy.sample.sample_custom(
            patcher,
            inputs.noise,
            1.0,
            comfy.samplers.KSAMPLER(sampler),
            inputs.sigmas,
            inputs.positive,
            inputs.negative,
            inputs.latent,
            seed=0,
            disable_pbar=True,
        )
    return result


def run(
    pack: dict,
    base: Any,
    spec: ModelSpec,
    *,
    size: tuple[int, int],
    configs: list[str],
    batch: int,
    seed: int,
    warmup: int,
    repeats: int,
    count_flops: bool,
    progress: Callable[[str], None],
    shapes_only: bool = True,
) -> list[CallResult]:
    """Measure every configuration in ``configs`` (a failing one is reported, the others still run)."""
    inputs = make_inputs(base, spec, size[0], size[1], batch, seed)
    results = []
    for name, patcher in patched_models(pack, base, spec, configs).items():
        if isinstance(patcher, str):
            progress(f"{name}: unavailable: {patcher}")
            results.append(CallResult(name, reason=patcher))
            continue
        try:
            results.append(
                measure(
                    name,
                    patcher,
                    inputs,
                    spec,
                    warmup=warmup,
                    repeats=repeats,
                    count_flops=count_flops,
                    progress=progress,
                    shapes_only=shapes_only,
                )
            )
        except Exception as exc:  # report the failing row, keep the others
            log.exception("%s failed", name)
            results.append(CallResult(name, reason=f"failed: {type(exc).__name__}: {exc}"))
    compare_with_off(results)
    return results


def compare_with_off(results: list[CallResult]) -> None:
    """Set each row's ``rel_diff_vs_off``: max|eps - eps_off| / max|eps_off|."""
    off = next((r for r in results if r.name == "off" and r.available and r.output is not None), None)
    if off is None:
        return
    for r in results:
        if r.available and r.output is not None:
            r.rel_diff_vs_off = float((r.output - off.output).abs().max() / off.output.abs().max())
