"""Time and count one UNet call of a full-size SD1.5 (or SDXL) model, unpatched vs HiDiffusion.

Why this script exists: HiDiffusion's promise is speed at high resolution (MSW-MSA cuts the
self-attention of the highest-resolution blocks about 4x, RAU-Net runs the deep levels at
a fraction of the size). Issues 2 and 3 ask for the time ratio and the FLOP ratio of one
UNet call at 1024x1024 with the real architecture, so that the figures in
``docs/benchmarks.md`` can be reproduced and compared with the seed pack's.

What is measured, and why this way:

* The model is ComfyUI's own ``BaseModel``/``UNetModel`` built from the real SD1.5 config
  (ComfyUI's model classes, random N(0, 0.02) weights from a seeded generator, fp32,
  CPU mode), so there is no checkpoint to download and the layers are exactly ComfyUI's.
* The patched models come from the pack's nodes, taken from ComfyUI's node registry after
  ComfyUI's own loader loaded the pack, so what is timed is what a user gets.
* Each call goes through ``comfy.sample.sample_custom`` with a sampler that calls the
  denoiser once per measurement at the first sigma of a 20-step schedule (sigma_max,
  where every effect of every configuration is active). That is the same path a real
  sampling step takes: the patcher is loaded (object patches exist), every wrapper runs
  (the pack's per-run state, seeded shifts), and ``transformer_options`` carries the
  patches, ``sigmas`` and ``sample_sigmas``. cfg is 1.0, so a call is one UNet forward of
  batch 1 (ComfyUI skips the unconditional branch).
* FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` around one call: matrix
  products (mm/addmm for linear layers, bmm/baddbmm/scaled-dot-product for attention) and
  convolutions, 2 FLOPs per multiply-add; norms, softmax, GELU and resampling are not
  counted. The attention part is checked against a hand count from the token grids the
  transformer blocks actually saw during that call (4 * B * Nq * Nk * inner_dim per
  attention, per 2x2 window where MSW-MSA windows the block), so an attention kernel the
  counter missed, or windowing that did not happen, shows up as a mismatch.

Run ``python benchmarks/unet_call.py --help`` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
HARNESS_DIR = REPO_ROOT / "tests" / "comfy"
CONFIG_NAMES = ("off", "msw", "raunet", "both")
SCHEDULE_STEPS = 20
"""Length of the sigma schedule handed to the sampler (``sample_sigmas``); the benchmarked
call is its first sigma, so the length only matters for the pack's step bookkeeping."""
WEIGHT_STD = 0.02
BUSY_LOAD = 0.5
"""A 1-minute load average above this before the run means something else is computing."""
CONTEXT_TOKENS = 77

log = logging.getLogger("benchmarks.unet_call")


# --------------------------------------------------------------------------------------
# What is benchmarked


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its real UNet config and the node settings of each configuration.

    ``msw`` and ``raunet`` are the keyword inputs of ``ApplyMSWMSAAttention`` and
    ``ApplyRAUNet``; every effect is active at sigma_max so the call shows its full effect.
    ``msw_blocks`` repeats the windowed blocks for the hand count of attention FLOPs.
    """

    name: str
    title: str
    model_class: str
    unet_overrides: dict[str, Any]
    msw: dict[str, Any]
    msw_blocks: frozenset[tuple[str, int]]
    raunet: dict[str, Any]
    pooled_output: bool = False


def _blocks(kind: str, text: str) -> set[tuple[str, int]]:
    return {(kind, int(item)) for item in text.split(",") if item.strip()}


def _msw(input_blocks: str, output_blocks: str) -> dict[str, Any]:
    return {
        "input_blocks": input_blocks,
        "middle_blocks": "",
        "output_blocks": output_blocks,
        "time_mode": "percent",
        "start_time": 0.0,
        "end_time": 1.0,
    }


SD15 = ModelSpec(
    name="sd15",
    title="SD1.5",
    model_class="SD15",
    # model_detection.py's SD15 dict: the harness's tiny layout at the real widths.
    unet_overrides={"model_channels": 320, "context_dim": 768, "num_heads": 8},
    # The Simple preset's blocks (input 1,2 / output 9,10,11), active over the whole run
    # (the preset starts at 20 %, which would leave the benchmarked sigma_max unwindowed).
    msw=_msw("1,2", "9,10,11"),
    msw_blocks=frozenset(_blocks("input", "1,2") | _blocks("output", "9,10,11")),
    # The seed pack's SD1.5 workflow: RAU-Net in 3 / out 8 (0-0.45), CA in 4 / out 8 (0-0.25).
    raunet={
        "input_blocks": "3",
        "output_blocks": "8",
        "time_mode": "percent",
        "start_time": 0.0,
        "end_time": 0.45,
        "upscale_mode": "bicubic",
        "ca_start_time": 0.0,
        "ca_end_time": 0.25,
        "ca_input_blocks": "4",
        "ca_output_blocks": "8",
        "ca_upscale_mode": "bicubic",
        "ca_downscale_mode": "avg_pool2d",
        "ca_downscale_factor": 2.0,
        "two_stage_upscale_mode": "disabled",
    },
)

SDXL = ModelSpec(
    name="sdxl",
    title="SDXL",
    model_class="SDXL",
    # model_detection.py's SDXL dict.
    unet_overrides={
        "model_channels": 320,
        "context_dim": 2048,
        "num_head_channels": 64,
        "transformer_depth": [0, 0, 2, 2, 10, 10],
        "transformer_depth_middle": 10,
        "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    },
    msw=_msw("4,5", "3,4,5"),
    msw_blocks=frozenset(_blocks("input", "4,5") | _blocks("output", "3,4,5")),
    # The seed's SDXL "ultra" Simple preset: in 3 / out 5 (0-0.45), CA in 4 / out 5 (0-0.6).
    raunet={
        "input_blocks": "3",
        "output_blocks": "5",
        "time_mode": "percent",
        "start_time": 0.0,
        "end_time": 0.45,
        "upscale_mode": "bicubic",
        "ca_start_time": 0.0,
        "ca_end_time": 0.6,
        "ca_input_blocks": "4",
        "ca_output_blocks": "5",
        "ca_upscale_mode": "bicubic",
        "ca_downscale_mode": "avg_pool2d",
        "ca_downscale_factor": 2.0,
        "two_stage_upscale_mode": "disabled",
    },
    pooled_output=True,
)

MODELS = {spec.name: spec for spec in (SD15, SDXL)}


@dataclass
class ConfigResult:
    """Everything measured for one configuration (None where not measured)."""

    name: str
    available: bool = True
    reason: str = ""
    seconds: list[float] = field(default_factory=list)
    flops_by_op: dict[str, int] = field(default_factory=dict)
    attention_expected: int | None = None
    grids: list[dict[str, Any]] = field(default_factory=list)
    rel_diff_vs_off: float | None = None
    peak_rss_bytes: int | None = None
    output: Any = None  # the UNet's noise prediction in the first call, for the comparison with "off"

    @property
    def mean_s(self) -> float | None:
        return sum(self.seconds) / len(self.seconds) if self.seconds else None

    @property
    def total_flops(self) -> int | None:
        return sum(self.flops_by_op.values()) if self.flops_by_op else None

    def flops_of(self, kind: str) -> int:
        """FLOPs of one kind of operation: conv, linear, attention or other."""
        return sum(v for op, v in self.flops_by_op.items() if op_kind(op) == kind)


def op_kind(op: str) -> str:
    """Which part of the network a counted aten op belongs to.

    ComfyUI's linear layers reach aten as mm/addmm and its attention kernels (sub-quadratic,
    split, basic, or PyTorch SDPA) as bmm/baddbmm/SDPA; the hand count of attention FLOPs
    confirms that nothing else lands in the attention bucket.
    """
    name = op.rsplit(".", 1)[-1]
    if name.startswith("convolution"):
        return "conv"
    if name in ("mm", "addmm"):
        return "linear"
    if name in ("bmm", "baddbmm") or "scaled_dot_product" in name:
        return "attention"
    return "other"


# --------------------------------------------------------------------------------------
# ComfyUI, the pack and the model


def setup_comfyui() -> tuple[Any, dict]:
    """Import ComfyUI in CPU mode and load the pack with ComfyUI's own loader.

    Reuses the test harness so the benchmark sees ComfyUI exactly as the tests do.
    """
    if str(HARNESS_DIR) not in sys.path:
        sys.path.insert(0, str(HARNESS_DIR))
    import harness

    if not harness.comfyui_available():
        raise SystemExit(
            f"ComfyUI not found at {harness.comfyui_path()}: run scripts/setup.sh or set COMFYUI_PATH "
            "to a ComfyUI 0.3.64 checkout."
        )
    harness.import_comfyui()
    return harness, harness.load_pack()


def build_model(harness: Any, spec: ModelSpec, seed: int) -> Any:
    """A ModelPatcher around ComfyUI's model class for ``spec`` with seeded random weights.

    ComfyUI's ops leave weights uninitialised; N(0, 0.02) keeps activations in a normal
    range through the depth of the UNet (GroupNorm renormalises every block), so timings
    are not distorted by denormals or NaNs.
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    base = harness.SD15_CONFIG if spec.name == "sd15" else harness.SDXL_CONFIG
    config = dict(base, **spec.unet_overrides, dtype=torch.float32)
    model_config = getattr(comfy.supported_models, spec.model_class)(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, WEIGHT_STD, generator=generator)
    model.eval()
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def patched_models(pack: dict, base: Any, spec: ModelSpec, names: list[str]) -> dict[str, Any | str]:
    """The ModelPatcher of each configuration, or a string saying why it is unavailable.

    The nodes are called exactly as ComfyUI calls them (``execute`` of the registered
    class), so a patch the node makes at execute time is part of the benchmark.
    """

    def apply(node: str, model: Any, inputs: dict[str, Any]) -> Any:
        if node not in pack:
            raise LookupError(f"{node} is not in ComfyUI's node registry (not in this version of the pack)")
        return pack[node].execute(model=model, **inputs).result[0]

    models: dict[str, Any | str] = {}
    for name in names:
        try:
            if name == "off":
                models[name] = base
            elif name == "msw":
                models[name] = apply("ApplyMSWMSAAttention", base, spec.msw)
            elif name == "raunet":
                models[name] = apply("ApplyRAUNet", base, spec.raunet)
            elif name == "both":
                rau = apply("ApplyRAUNet", base, spec.raunet)
                models[name] = apply("ApplyMSWMSAAttention", rau, spec.msw)
        except Exception as exc:  # a missing or failing node only drops its rows
            models[name] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, LookupError) else str(exc.args[0])
    return models


# --------------------------------------------------------------------------------------
# Attention bookkeeping for the hand count


class AttentionRecorder:
    """Pass-through attn1/attn2 patches that note the token grid of every attention call.

    Added only to the FLOP-counted call (through that call's model_options), never to
    the timed calls. They return their inputs unchanged and run no tensor ops, so they
    change neither the result nor the FLOP count.
    """

    def __init__(self, windowed_blocks: frozenset[tuple[str, int]]) -> None:
        self.windowed_blocks = windowed_blocks
        self.self_calls: list[dict[str, Any]] = []
        self.cross_calls: list[dict[str, Any]] = []

    def attn1(self, n: Any, context: Any, value: Any, extra: dict) -> tuple[Any, Any, Any]:
        shape = extra.get("activations_shape") or [n.shape[0], 0, 0, 0]
        block = extra.get("block") or ("?", -1)
        self.self_calls.append(
            {
                "block": f"{block[0]}.{block[1]}",
                "key": (block[0], int(block[1])),
                "batch": int(n.shape[0]),
                "tokens": int(n.shape[1]),
                "context_tokens": int(context.shape[1]),
                "height": int(shape[2]),
                "width": int(shape[3]),
                "inner": int(extra["n_heads"] * extra["dim_head"]),
            }
        )
        return n, context, value

    def attn2(self, n: Any, context: Any, value: Any, extra: dict) -> tuple[Any, Any, Any]:
        self.cross_calls.append(
            {
                "batch": int(n.shape[0]),
                "tokens": int(n.shape[1]),
                "context_tokens": int(context.shape[1]),
                "inner": int(extra["n_heads"] * extra["dim_head"]),
            }
        )
        return n, context, value

    def windowed(self, call: dict[str, Any]) -> bool:
        """Whether MSW-MSA windows this self-attention call (it does whenever it can)."""
        return (
            call["key"] in self.windowed_blocks
            and call["tokens"] == call["height"] * call["width"] == call["context_tokens"]
        )

    def expected_flops(self) -> int:
        """Attention FLOPs by hand: QK^T and AV are 2 * B * Nq * Nk * inner each.

        A windowed call attends inside 2x2 windows of ceil(H/2) x ceil(W/2) tokens (the
        far windows take the rest of an odd side), so its cost is the sum over windows.
        """
        total = 0
        for call in self.self_calls:
            if self.windowed(call):
                rows = _halves(call["height"])
                cols = _halves(call["width"])
                pairs = sum((r * c) ** 2 for r in rows for c in cols)
            else:
                pairs = call["tokens"] * call["context_tokens"]
            total += 4 * call["batch"] * pairs * call["inner"]
        for call in self.cross_calls:
            total += 4 * call["batch"] * call["tokens"] * call["context_tokens"] * call["inner"]
        return total

    def grids(self) -> list[dict[str, Any]]:
        """Self-attention token grids, in call order, grouped: what each level really ran at."""
        counts: Counter[tuple[int, int, bool]] = Counter()
        for call in self.self_calls:
            counts[(call["height"], call["width"], self.windowed(call))] += 1
        return [{"height": h, "width": w, "windowed": win, "blocks": n} for (h, w, win), n in counts.items()]

    def install(self, model_options: dict) -> dict:
        """A copy of ``model_options`` with the recording patches appended (run last)."""
        import comfy.model_patcher

        options = comfy.model_patcher.create_model_options_clone(model_options)
        patches = options.setdefault("transformer_options", {}).setdefault("patches", {})
        patches["attn1_patch"] = [*patches.get("attn1_patch", []), self.attn1]
        patches["attn2_patch"] = [*patches.get("attn2_patch", []), self.attn2]
        return options


def _halves(side: int) -> tuple[int, ...]:
    first = -(-side // 2)
    return (first, side - first) if side - first else (first,)


# --------------------------------------------------------------------------------------
# Memory


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux), so each configuration gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes(reset_worked: bool) -> int:
    """Peak RSS since the last reset (VmHWM), else the process's lifetime peak."""
    if reset_worked:
        match = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        if match:
            return int(match.group(1)) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# --------------------------------------------------------------------------------------
# The measurement


@dataclass(frozen=True)
class Inputs:
    """The fixed inputs every configuration is called with."""

    noise: Any
    latent: Any
    positive: list
    negative: list
    sigmas: Any


def make_inputs(base: Any, spec: ModelSpec, height: int, width: int, batch: int, seed: int) -> Inputs:
    """Noise, an empty latent, random text conditioning and the sigma schedule."""
    import comfy.samplers
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    context_dim = spec.unet_overrides["context_dim"]
    extra: dict[str, Any] = {}
    if spec.pooled_output:
        extra = {
            "pooled_output": torch.randn(1, 1280, generator=generator),
            "width": width * 8,
            "height": height * 8,
        }
    positive = [[torch.randn(1, CONTEXT_TOKENS, context_dim, generator=generator), extra]]
    negative = [[torch.zeros(1, CONTEXT_TOKENS, context_dim), dict(extra)]]
    latent = torch.zeros(batch, 4, height, width)
    noise = torch.randn(batch, 4, height, width, generator=generator)
    sigmas = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "normal", SCHEDULE_STEPS)
    return Inputs(noise, latent, positive, negative, sigmas)


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
) -> ConfigResult:
    """Warm up, count FLOPs, then time ``repeats`` calls of one configuration.

    All calls happen inside one ``sample_custom`` run, through a sampler that calls the
    denoiser at the schedule's first sigma; see the module docstring for why.
    """
    import comfy.sample
    import comfy.samplers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    result = ConfigResult(name)
    windowed = spec.msw_blocks if name in ("msw", "both") else frozenset()

    def sampler(
        model: Any, x: Any, sigmas: Any, extra_args: dict | None = None, callback: Any = None, disable: Any = None
    ) -> Any:
        extra_args = dict(extra_args or {})
        sigma = x.new_ones([x.shape[0]]) * sigmas[0]

        def call(args: dict) -> Any:
            out = model(x, sigma, **args)
            if result.output is None:
                # The denoised latent is x - sigma * eps and x ~ sigma * noise dwarfs any
                # change, so compare the UNet's own output, eps.
                result.output = ((x - out) / sigma.view(-1, 1, 1, 1)).detach().clone()
            return out

        for i in range(warmup):
            progress(f"{name}: warm-up {i + 1}/{warmup}")
            call(extra_args)
        if count_flops:
            progress(f"{name}: counting FLOPs")
            recorder = AttentionRecorder(windowed)
            args = dict(extra_args, model_options=recorder.install(extra_args.get("model_options", {})))
            with FlopCounterMode(display=False) as counter:
                call(args)
            result.flops_by_op = {str(op): int(v) for op, v in counter.get_flop_counts().get("Global", {}).items()}
            result.attention_expected = recorder.expected_flops()
            result.grids = recorder.grids()
        reset = _reset_peak_rss()
        for i in range(repeats):
            progress(f"{name}: timed call {i + 1}/{repeats}")
            start = time.perf_counter()
            call(extra_args)
            result.seconds.append(time.perf_counter() - start)
            progress(f"{name}: {result.seconds[-1]:.2f} s")
        result.peak_rss_bytes = _peak_rss_bytes(reset)
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


# --------------------------------------------------------------------------------------
# Reporting


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` and ``suffix``, or a dash of the same width."""
    if value is None:
        width = int(re.match(r"\d*", spec).group() or 0) + len(suffix)
        return f"{'-':>{width}}"
    return f"{value:{spec}}{suffix}"


def _load_average() -> float | None:
    """The 1-minute load average: on a small machine, other work skews every timing."""
    with contextlib.suppress(OSError, AttributeError):
        return round(os.getloadavg()[0], 2)
    return None


def machine() -> dict[str, Any]:
    """A description of the host, for naming the machine next to the figures."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if match:
            cpu = match.group(1).strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = None
    with contextlib.suppress(OSError):
        match = re.search(r"MemTotal:\s+(\d+)\s+kB", Path("/proc/meminfo").read_text())
        if match:
            memory = round(int(match.group(1)) / 2**20, 1)
    return {"cpu": cpu, "cpus_usable": usable, "memory_gib": memory, "os": platform.platform()}


def report_dict(meta: dict[str, Any], results: list[ConfigResult]) -> dict[str, Any]:
    """The machine-readable report (``--json``)."""
    off = next((r for r in results if r.name == "off" and r.available), None)
    rows = []
    for r in results:
        row: dict[str, Any] = {"name": r.name, "available": r.available}
        if not r.available:
            row["reason"] = r.reason
            rows.append(row)
            continue
        row.update(
            seconds=r.seconds,
            mean_s=r.mean_s,
            min_s=min(r.seconds) if r.seconds else None,
            speedup_vs_off=_ratio(off.mean_s, r.mean_s) if off else None,
            gflop=_giga(r.total_flops),
            flop_ratio_vs_off=_ratio(off.total_flops, r.total_flops) if off else None,
            gflop_by_kind={k: _giga(r.flops_of(k)) for k in ("conv", "linear", "attention", "other")}
            if r.flops_by_op
            else None,
            flops_by_op=r.flops_by_op or None,
            attention_gflop_expected=_giga(r.attention_expected),
            self_attention_grids=r.grids or None,
            rel_diff_vs_off=r.rel_diff_vs_off,
            peak_rss_gib=round(r.peak_rss_bytes / 2**30, 2) if r.peak_rss_bytes else None,
        )
        rows.append(row)
    return {**meta, "configs": rows, "warnings": sanity_warnings(results, meta)}


def _giga(value: int | None) -> float | None:
    return None if value is None else value / 1e9


def _grid_text(grids: list[dict[str, Any]]) -> str:
    parts = []
    for g in grids:
        mark = " windowed" if g["windowed"] else ""
        parts.append(f"{g['height']}x{g['width']}{mark} x{g['blocks']}")
    return ", ".join(parts) or "-"


def sanity_warnings(results: list[ConfigResult], meta: dict[str, Any]) -> list[str]:
    """Signs that a figure cannot be trusted: a busy machine, a patch that did not act, uncounted attention.

    A patched configuration whose output equals the unpatched one, or (for RAU-Net) whose
    transformer blocks ran at the unpatched token grids, was not really patched at the
    benchmarked sigma; an attention count that differs from the hand count means the
    FLOP counter missed (or double-counted) an attention kernel.
    """
    warnings = []
    load = meta.get("load_average_1min", {}).get("start")
    if load is not None and load > BUSY_LOAD:
        warnings.append(
            f"the 1-minute load average was {load} before the benchmark started: other processes share the CPUs, "
            "so the timings (not the FLOPs) are unreliable"
        )
    off = next((r for r in results if r.name == "off" and r.available), None)
    for r in results:
        if not r.available:
            continue
        attention = r.flops_of("attention") if r.flops_by_op else None
        expected = r.attention_expected
        if attention is not None and expected is not None and not math.isclose(attention, expected, rel_tol=1e-6):
            warnings.append(
                f"{r.name}: counted attention {attention / 1e9:.3f} GFLOP != hand count "
                f"{expected / 1e9:.3f} GFLOP; the FLOP totals are not trustworthy"
            )
        if off is None or r is off:
            continue
        if r.rel_diff_vs_off == 0.0:
            warnings.append(f"{r.name}: output identical to off: the patch did not act at the benchmarked sigma")
        if r.name in ("raunet", "both") and r.grids and off.grids:
            sizes = [(g["height"], g["width"], g["blocks"]) for g in r.grids]
            if sizes == [(g["height"], g["width"], g["blocks"]) for g in off.grids]:
                warnings.append(
                    f"{r.name}: transformer blocks ran at the unpatched token grids: RAU-Net was not active"
                )
    return warnings


def print_report(meta: dict[str, Any], results: list[ConfigResult]) -> None:
    """The human-readable report on stdout."""
    out = sys.stdout
    m = meta
    print(  # noqa: T201
        f"HiDiffusion UNet-call benchmark: {m['model_title']} ({m['parameters'] / 1e6:.1f} M parameters, random "
        f"N(0, {WEIGHT_STD}) weights, {m['dtype']}, {m['device']})",
        file=out,
    )
    print(  # noqa: T201
        f"image {m['width']}x{m['height']} px -> latent {m['latent'][1]}x{m['latent'][0]}, batch {m['batch']}, "
        f"sigma {m['sigma']:.4f} (first of {SCHEDULE_STEPS} 'normal' steps), cfg 1 (one UNet forward per call)",
        file=out,
    )
    print(  # noqa: T201
        f"torch {m['torch']}, {m['threads']} threads, load {m['load_average_1min']['start']}->"
        f"{m['load_average_1min']['end']}, attention {m['attention']}, warm-up {m['warmup']}, "
        f"repeats {m['repeats']}; machine: {m['machine']['cpu']}, {m['machine']['cpus_usable']} CPUs, "
        f"{m['machine']['memory_gib']} GiB",
        file=out,
    )
    print(file=out)  # noqa: T201
    off = next((r for r in results if r.name == "off" and r.available), None)
    header = f"{'config':<8} {'time s':>8} {'speed-up':>9} {'GFLOP':>9} {'FLOP ratio':>10} {'attn GFLOP':>10} {'attn check':>12} {'peak RSS':>9} {'diff vs off':>12}"
    print(header, file=out)  # noqa: T201
    print("-" * len(header), file=out)  # noqa: T201
    for r in results:
        if not r.available:
            print(f"{r.name:<8} unavailable: {r.reason}", file=out)  # noqa: T201
            continue
        attention = r.flops_of("attention") if r.flops_by_op else None
        check = "-"
        if attention is not None and r.attention_expected is not None:
            ok = math.isclose(attention, r.attention_expected, rel_tol=1e-6)
            check = "= hand count" if ok else f"!= {r.attention_expected / 1e9:.2f}"
        print(  # noqa: T201
            f"{r.name:<8} {_fmt(r.mean_s, '8.2f')} {_fmt(_ratio(off.mean_s, r.mean_s) if off else None, '8.2f', 'x')} "
            f"{_fmt(_giga(r.total_flops), '9.1f')} {_fmt(_ratio(off.total_flops, r.total_flops) if off else None, '9.2f', 'x')} "
            f"{_fmt(_giga(attention), '10.1f')} {check:>12} "
            f"{_fmt(r.peak_rss_bytes / 2**30 if r.peak_rss_bytes else None, '5.1f', ' GiB')} "
            f"{_fmt(r.rel_diff_vs_off, '12.2e') if r.name != 'off' else '-':>12}",
            file=out,
        )
    print(file=out)  # noqa: T201
    if any(r.available and r.grids for r in results):
        print("self-attention token grids seen during the FLOP-counted call (H x W, number of calls):", file=out)  # noqa: T201
        for r in results:
            if r.available and r.grids:
                print(f"  {r.name:<8} {_grid_text(r.grids)}", file=out)  # noqa: T201
    if any(r.available and r.flops_by_op for r in results):
        print("GFLOP by kind (conv / linear / attention / other):", file=out)  # noqa: T201
        for r in results:
            if r.available and r.flops_by_op:
                kinds = " / ".join(f"{r.flops_of(k) / 1e9:.1f}" for k in ("conv", "linear", "attention", "other"))
                print(f"  {r.name:<8} {kinds}", file=out)  # noqa: T201
    if any(len(r.seconds) > 1 for r in results):
        print("all timed calls (s):", file=out)  # noqa: T201
        for r in results:
            if r.seconds:
                print(f"  {r.name:<8} " + ", ".join(f"{s:.2f}" for s in r.seconds), file=out)  # noqa: T201
    print(  # noqa: T201
        "speed-up and FLOP ratio = off / config; attn check = counted attention FLOPs vs the hand count from "
        "the token grids; diff vs off = max|eps - eps_off| / max|eps_off| of the UNet output",
        file=out,
    )
    for warning in sanity_warnings(results, meta):
        print(f"WARNING: {warning}", file=out)  # noqa: T201


# --------------------------------------------------------------------------------------
# Command line


def parse_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (or one number for a square) in pixels, multiples of 8."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 1024x1024 (width x height), got {text!r}") from None
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise argparse.ArgumentTypeError(f"width and height must be positive multiples of 8, got {text!r}")
    return width, height


def parse_configs(text: str) -> list[str]:
    """A comma list of configurations, run in the canonical order (off first)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [n for n in names if n not in CONFIG_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; choose from {','.join(CONFIG_NAMES)}")
    return [n for n in CONFIG_NAMES if n in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time and FLOP-count one UNet call (full-size random-weight model, ComfyUI CPU mode), "
        "unpatched vs MSW-MSA / RAU-Net / both.",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="sd15", help="model family (default sd15)")
    parser.add_argument(
        "--size", type=parse_size, default=(1024, 1024), help="image WIDTHxHEIGHT in pixels (default 1024x1024)"
    )
    parser.add_argument("--batch", type=int, default=1, help="latent batch size (default 1)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per configuration (default 1)")
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed calls per configuration before timing (default 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument(
        "--configs",
        type=parse_configs,
        default=list(CONFIG_NAMES),
        help="comma list of off,msw,raunet,both (default all)",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP-counted call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the machine-readable report to PATH, or to stdout instead of the table when PATH is omitted",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show ComfyUI's and the pack's info logs")
    args = parser.parse_args(argv)
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """ComfyUI and its loader print to stdout; keep stdout for the report alone."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = _load_average()  # before this process adds its own load
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    spec = MODELS[args.model]
    width, height = args.size
    latent_h, latent_w = height // 8, width // 8

    def progress(message: str) -> None:
        print(f"[unet_call] {message}", file=sys.stderr, flush=True)  # noqa: T201

    with _stdout_to_stderr():
        import torch

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        progress("importing ComfyUI and loading the pack")
        harness, pack = setup_comfyui()
        import comfy.ldm.modules.attention as comfy_attention

        progress(f"building {spec.title} with random weights")
        base = build_model(harness, spec, args.seed)
        parameters = sum(p.numel() for p in base.model.parameters())
        inputs = make_inputs(base, spec, latent_h, latent_w, args.batch, args.seed)
        models = patched_models(pack, base, spec, args.configs)

        results: list[ConfigResult] = []
        failed = False
        for name in args.configs:
            patcher = models[name]
            if isinstance(patcher, str):
                progress(f"{name}: unavailable: {patcher}")
                results.append(ConfigResult(name, available=False, reason=patcher))
                continue
            try:
                result = measure(
                    name,
                    patcher,
                    inputs,
                    spec,
                    warmup=args.warmup,
                    repeats=args.repeats,
                    count_flops=not args.no_flops,
                    progress=progress,
                )
            except Exception as exc:  # report the failing row, keep the others
                log.exception("%s failed", name)
                result = ConfigResult(name, available=False, reason=f"failed: {type(exc).__name__}: {exc}")
                failed = True
            results.append(result)

        off = next((r for r in results if r.name == "off" and r.available), None)
        for r in results:
            if off is not None and r.available and r.output is not None and off.output is not None:
                r.rel_diff_vs_off = float((r.output - off.output).abs().max() / off.output.abs().max())

        meta = {
            "benchmark": "unet_call",
            "model": spec.name,
            "model_title": spec.title,
            "parameters": parameters,
            "dtype": "fp32",
            "device": str(base.load_device),
            "width": width,
            "height": height,
            "latent": [latent_h, latent_w],
            "batch": args.batch,
            "sigma": float(inputs.sigmas[0]),
            "schedule_steps": SCHEDULE_STEPS,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "attention": getattr(comfy_attention.optimized_attention, "__name__", "?"),
            "machine": machine(),
            "load_average_1min": {"start": load_start, "end": _load_average()},
        }

    if args.json:
        text = json.dumps(report_dict(meta, results), indent=2)
        if args.json == "-":
            print(text)  # noqa: T201
        else:
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text + "\n")
    if args.json != "-":
        print_report(meta, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
