"""The benchmark's report: a table for people, a JSON document for scripts, and warnings.

A figure that cannot be trusted says so: a busy CPU, a patch that did not act at the
benchmarked sigma, or counted attention that differs from the hand count.
"""

from __future__ import annotations

import math
from typing import Any, TextIO

from .flops import KINDS
from .machine import BUSY_LOAD
from .models import WEIGHT_STD
from .schedule import ScheduleResult
from .unet_call import SCHEDULE_STEPS, CallResult


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _giga(value: int | None) -> float | None:
    return None if value is None else value / 1e9


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{spec}}".rjust(width)


def _off(results: list[CallResult]) -> CallResult | None:
    return next((r for r in results if r.name == "off" and r.available), None)


def attention_matches(result: CallResult) -> bool | None:
    """Whether counted attention FLOPs equal the hand count (None when not counted)."""
    if not result.flops_by_op or result.attention_expected is None:
        return None
    return math.isclose(result.flops_of("attention"), result.attention_expected, rel_tol=1e-6)


def warnings(meta: dict[str, Any], results: list[CallResult]) -> list[str]:
    """Signs that a figure cannot be trusted."""
    found = []
    load = meta.get("load_average_1min", {}).get("start")
    if meta.get("device_type") == "cpu" and load is not None and load > BUSY_LOAD:
        found.append(
            f"the 1-minute load average was {load} before the benchmark started: other processes share the CPUs, "
            "so the timings (not the FLOPs) are unreliable"
        )
    off = _off(results)
    for r in results:
        if not r.available:
            continue
        if attention_matches(r) is False:
            found.append(
                f"{r.name}: counted attention {r.flops_of('attention') / 1e9:.3f} GFLOP != hand count "
                f"{r.attention_expected / 1e9:.3f} GFLOP; the FLOP totals are not trustworthy"
            )
        if off is None or r is off:
            continue
        if r.rel_diff_vs_off == 0.0:
            found.append(f"{r.name}: output identical to off: the patch did not act at the benchmarked sigma")
        same_grids = [(g["height"], g["width"], g["blocks"]) for g in r.grids] == [
            (g["height"], g["width"], g["blocks"]) for g in off.grids
        ]
        if r.name in ("raunet", "both") and r.grids and off.grids and same_grids:
            found.append(f"{r.name}: transformer blocks ran at the unpatched token grids: RAU-Net was not active")
    return found


def as_dict(meta: dict[str, Any], results: list[CallResult], schedule: ScheduleResult | None) -> dict[str, Any]:
    """The machine-readable report (``--json``)."""
    off = _off(results)
    rows = []
    for r in results:
        row: dict[str, Any] = {"name": r.name, "available": r.available}
        if not r.available:
            rows.append({**row, "reason": r.reason})
            continue
        row.update(
            seconds=r.seconds,
            mean_s=r.mean_s,
            speedup_vs_off=_ratio(off.mean_s, r.mean_s) if off else None,
            gflop=_giga(r.total_flops),
            flop_ratio_vs_off=_ratio(off.total_flops, r.total_flops) if off else None,
            gflop_by_kind={k: _giga(r.flops_of(k)) for k in KINDS} if r.flops_by_op else None,
            flops_by_op=r.flops_by_op or None,
            attention_gflop_expected=_giga(r.attention_expected),
            attention_matches_hand_count=attention_matches(r),
            self_attention_grids=r.grids or None,
            rel_diff_vs_off=r.rel_diff_vs_off,
            peak_memory_gib=_gib(r.peak_memory_bytes),
        )
        rows.append(row)
    document = {**meta, "unet_call": rows, "warnings": warnings(meta, results)}
    if schedule is not None:
        document["schedule"] = {
            "size": list(schedule.size),
            "steps": schedule.steps,
            "res_mode": schedule.res_mode,
            "step_seconds": schedule.step_seconds,
            "total_s": {run: schedule.total(run) for run in schedule.step_seconds},
            "speedup": _ratio(schedule.total("off"), schedule.total("simple")),
            "peak_memory_gib": {run: _gib(v) for run, v in schedule.peak_memory_bytes.items()},
        }
    return document


def write_header(out: TextIO, meta: dict[str, Any]) -> None:
    m = meta
    out.write(
        f"HiDiffusion benchmark: {m['model_title']} ({m['parameters'] / 1e6:.1f} M parameters, random "
        f"N(0, {WEIGHT_STD}) weights, {m['dtype']}) on {m['device']}\n"
        f"machine: {m['machine_name']}\n"
        f"torch {m['torch']}, ComfyUI {m['comfyui']} (model loader {m['loader']}, attention {m['attention']}), "
        f"{m['threads']} CPU threads, "
        f"load {m['load_average_1min']['start']} -> {m['load_average_1min']['end']}\n\n"
    )


def write_unet_call(out: TextIO, meta: dict[str, Any], results: list[CallResult]) -> None:
    """The one-call table, the token grids each row ran at, and the FLOPs by kind."""
    m = meta
    out.write(
        f"One UNet call: image {m['width']}x{m['height']} px (latent {m['latent'][1]}x{m['latent'][0]}), "
        f"batch {m['batch']}, sigma {m['sigma']:.4f} (first of {SCHEDULE_STEPS} 'normal' steps), cfg 1; "
        f"warm-up {m['warmup']}, timed calls {m['repeats']}\n"
    )
    off = _off(results)
    memory = f"peak {m['memory_kind']}"
    header = (
        f"{'config':<8} {'time s':>9} {'speed-up':>9} {'GFLOP':>9} {'FLOP ratio':>10} "
        f"{'attn GFLOP':>10} {'attn check':>12} {memory:>10} {'diff vs off':>12}"
    )
    out.write(header + "\n" + "-" * len(header) + "\n")
    for r in results:
        if not r.available:
            out.write(f"{r.name:<8} unavailable: {r.reason}\n")
            continue
        check = {None: "-", True: "= hand count", False: "MISMATCH"}[attention_matches(r)]
        speedup = _ratio(off.mean_s, r.mean_s) if off else None
        flop_ratio = _ratio(off.total_flops, r.total_flops) if off else None
        diff = None if r is off else r.rel_diff_vs_off
        out.write(
            f"{r.name:<8} {_fmt(r.mean_s, '.3f', 9)} {_fmt(speedup, '.2f', 8)}x {_fmt(_giga(r.total_flops), '.1f', 9)} "
            f"{_fmt(flop_ratio, '.2f', 9)}x {_fmt(_giga(r.flops_of('attention')) if r.flops_by_op else None, '.1f', 10)} "
            f"{check:>12} {_fmt(_gib(r.peak_memory_bytes), '.2f', 6)} GiB {_fmt(diff, '.2e', 12)}\n"
        )
    counted = [r for r in results if r.available and r.flops_by_op]
    if counted:
        out.write(
            "\nself-attention token grids (H x W, calls) and GFLOP by kind (conv / linear / attention / other):\n"
        )
        for r in counted:
            grids = ", ".join(
                f"{g['height']}x{g['width']}{' windowed' if g['windowed'] else ''} x{g['blocks']}" for g in r.grids
            )
            kinds = " / ".join(f"{r.flops_of(k) / 1e9:.1f}" for k in KINDS)
            out.write(f"  {r.name:<8} {kinds:<28} {grids}\n")
    out.write(
        "speed-up and FLOP ratio = off / config; attn check = counted attention FLOPs vs a hand count from the "
        "token grids; diff vs off = max|eps - eps_off| / max|eps_off|\n"
    )
    for warning in warnings(meta, results):
        out.write(f"WARNING: {warning}\n")


def write_schedule(out: TextIO, meta: dict[str, Any], schedule: ScheduleResult, chart: str | None) -> None:
    """The whole-run table and the per-step times."""
    width, height = schedule.size
    out.write(
        f"\nWhole run: {width}x{height} px, {schedule.steps} steps euler, cfg 5 (batch 2), "
        f"Simple presets with res_mode {schedule.res_mode}\n"
    )
    off = schedule.total("off")
    out.write(f"{'run':<8} {'total s':>9} {'s/step':>8} {'speed-up':>9} {'peak ' + meta['memory_kind']:>10}\n")
    for run, times in schedule.step_seconds.items():
        peak = _gib(schedule.peak_memory_bytes[run])
        out.write(
            f"{run:<8} {sum(times):9.2f} {sum(times) / len(times):8.3f} {off / sum(times):8.2f}x "
            f"{_fmt(peak, '.2f', 6)} GiB\n"
        )
    out.write("seconds per step:\n")
    for run, times in schedule.step_seconds.items():
        out.write(f"  {run:<6} " + " ".join(f"{t:.2f}" for t in times) + "\n")
    if chart:
        out.write(f"chart: {chart}\n")
