"""``python -m hidiff bench``: one command, no checkpoint, defaults that suit the device.

On a GPU the defaults are the figures users ask about (1024² per call and per run, several
timed calls); on a CPU they are sized to finish in about two minutes on two cores (one
call at 512², a 20-step run at 256²). ``--size`` and ``--schedule-size`` pick other sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import machine
from .models import MODELS
from .schedule import RES_MODES
from .unet_call import CONFIG_NAMES, DEFAULT_CONFIGS, SCHEDULE_STEPS


@dataclass(frozen=True)
class DeviceDefaults:
    """What ``bench`` does when not told otherwise, per kind of device."""

    size: tuple[int, int]
    schedule_size: tuple[int, int]
    warmup: int
    repeats: int


CPU_DEFAULTS = DeviceDefaults(size=(512, 512), schedule_size=(256, 256), warmup=0, repeats=1)
"""The FLOP count runs on shapes only, so on a CPU the first timed call is the first real one;
its one-off costs are small next to seconds per call."""
GPU_DEFAULTS = DeviceDefaults(size=(1024, 1024), schedule_size=(1024, 1024), warmup=2, repeats=5)
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEFAULT_CHART = "hidiff-bench-schedule.png"


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


def _positive(minimum: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hidiff bench",
        description="Time and FLOP-count HiDiffusion inside ComfyUI with a full-size random-weight model: one UNet "
        "call unpatched vs MSW-MSA / RAU-Net / both, then a whole sampling run unpatched vs the Simple presets.",
        epilog=f"Defaults on a GPU: --size {_size_text(GPU_DEFAULTS.size)}, --schedule-size "
        f"{_size_text(GPU_DEFAULTS.schedule_size)}, --warmup {GPU_DEFAULTS.warmup}, --repeats {GPU_DEFAULTS.repeats}; "
        f"on a CPU: --size {_size_text(CPU_DEFAULTS.size)}, --schedule-size {_size_text(CPU_DEFAULTS.schedule_size)}, "
        f"--warmup {CPU_DEFAULTS.warmup}, --repeats {CPU_DEFAULTS.repeats}. See docs/benchmarks.md.",
    )
    add = parser.add_argument
    add("--model", choices=sorted(MODELS), default="sd15", help="architecture (default sd15)")
    add("--size", type=parse_size, help="image WIDTHxHEIGHT in pixels for the one-call table (default per device)")
    add(
        "--configs",
        type=parse_configs,
        default=list(DEFAULT_CONFIGS),
        help="comma list of off,msw,raunet,both (default) and msw-native (MSW-MSA with window_grid: native)",
    )
    add("--batch", type=_positive(1), default=1, help="latent batch of the one-call table (default 1)")
    add("--warmup", type=_positive(0), help="untimed calls per configuration (default per device)")
    add("--repeats", type=_positive(0), help="timed calls per configuration, shown as the mean (0: FLOPs only)")
    add("--no-flops", action="store_true", help="skip the FLOP count")
    add("--steps", type=_positive(1), default=SCHEDULE_STEPS, help="steps of the whole run (default 20)")
    add("--schedule-size", type=parse_size, help="image WIDTHxHEIGHT of the whole run (default per device)")
    add("--res-mode", choices=sorted(RES_MODES), default="high", help="Simple presets' res_mode (default high)")
    add("--no-schedule", action="store_true", help="skip the whole run")
    add("--chart", default=DEFAULT_CHART, help=f"PNG of the per-step times (default ./{DEFAULT_CHART}; '' for none)")
    add("--json", nargs="?", const="-", metavar="PATH", help="write JSON to PATH, or to stdout instead of the tables")
    add("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    add("--dtype", choices=["auto", *DTYPES], default="auto", help="weights and compute (default: ComfyUI's choice)")
    add("--threads", type=_positive(1), help="torch CPU threads (default: torch's choice)")
    add("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    add("-v", "--verbose", action="store_true", help="show ComfyUI's and the pack's info logs")
    return parser


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """ComfyUI and its loader print to stdout; keep stdout for the report alone."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the report."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    load_start = machine.load_average()  # before this process adds its own load
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from . import comfy_env

    with _stdout_to_stderr():
        progress("importing ComfyUI and loading the pack")
        try:
            comfy_env.import_comfyui(cpu=args.cpu)
        except comfy_env.ComfyUINotFoundError as exc:
            sys.stderr.write(f"{exc}\n")
            return 2
        pack = comfy_env.load_pack()
        document, text = run_benchmarks(args, pack, load_start)
    if args.json:
        encoded = json.dumps(document, indent=2)
        if args.json == "-":
            sys.stdout.write(encoded + "\n")
        else:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(encoded + "\n")
    if args.json != "-":
        sys.stdout.write(text)
    failed = any(row.get("reason", "").startswith("failed") for row in document["unet_call"])
    return 1 if failed else 0


def run_benchmarks(args: argparse.Namespace, pack: dict, load_start: float | None) -> tuple[dict, str]:
    """Run what ``args`` asks for; return the JSON document and the text report."""
    import io

    import comfy.model_management as mm
    import torch

    from . import report, schedule, unet_call
    from .models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = mm.get_torch_device()
    defaults = CPU_DEFAULTS if device.type == "cpu" else GPU_DEFAULTS
    size = args.size or defaults.size
    warmup = defaults.warmup if args.warmup is None else args.warmup
    repeats = defaults.repeats if args.repeats is None else args.repeats
    spec = MODELS[args.model]
    dtype = None if args.dtype == "auto" else getattr(torch, DTYPES[args.dtype])
    progress(f"building {spec.title} with random weights")
    base = build_model(spec, args.seed, dtype)
    results = unet_call.run(
        pack,
        base,
        spec,
        size=size,
        configs=args.configs,
        batch=args.batch,
        seed=args.seed,
        warmup=warmup,
        repeats=repeats,
        count_flops=not args.no_flops,
        progress=progress,
    )
    whole_run = None
    if not args.no_schedule:
        schedule_size = args.schedule_size or defaults.schedule_size
        progress(f"whole run: {args.steps} steps at {_size_text(schedule_size)}, unpatched and with the Simple presets")
        whole_run = schedule.run(
            pack, base, spec, size=schedule_size, steps=args.steps, res_mode=args.res_mode, seed=args.seed
        )
    meta = describe_run(base, spec, device, size, args, warmup=warmup, repeats=repeats, load_start=load_start)
    text = io.StringIO()
    report.write_header(text, meta)
    report.write_unet_call(text, meta, results)
    if whole_run is not None:
        chart = args.chart or None
        if chart:
            title = (
                f"{spec.title} {_size_text(whole_run.size)}, {whole_run.steps} steps on {meta['device']}: "
                "seconds per step"
            )
            schedule.draw_chart(Path(chart), whole_run.step_seconds, title)
        report.write_schedule(text, meta, whole_run, chart)
    return report.as_dict(meta, results, whole_run), text.getvalue()


def describe_run(
    base: Any,
    spec: Any,
    device: Any,
    size: tuple[int, int],
    args: argparse.Namespace,
    *,
    warmup: int,
    repeats: int,
    load_start: float | None,
) -> dict[str, Any]:
    """What was run, on what: the head of the report and of the JSON document."""
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management as mm
    import torch

    from . import comfy_env, unet_call
    from .models import parameter_count

    info = machine.describe(device)
    return {
        "benchmark": "hidiff bench",
        "model": spec.name,
        "model_title": spec.title,
        "parameters": parameter_count(base),
        "dtype": str(base.model.get_dtype()).removeprefix("torch."),
        "device": mm.get_torch_device_name(device),
        "device_type": device.type,
        "memory_kind": machine.PeakMemory(device).kind,
        "width": size[0],
        "height": size[1],
        "latent": [size[1] // 8, size[0] // 8],
        "batch": args.batch,
        "sigma": float(unet_call.schedule(base)[0]),
        "warmup": warmup,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "attention": getattr(comfy_attention.optimized_attention, "__name__", "?"),
        "loader": comfy_env.model_loader(),
        "comfyui": comfy_env.comfyui_version(),
        "machine": info,
        "machine_name": machine.name(info, device),
        "load_average_1min": {"start": load_start, "end": machine.load_average()},
    }
