"""``python -m hidiff bench [options]``: the pack's benchmark, with defaults that finish
in about three minutes on a small CPU.

It runs two scripts of this checkout (see ``benchmarks/README.md``):

1. ``benchmarks/unet_call.py``: one UNet call of the full SD1.5 (or ``--model sdxl``)
   architecture with random weights, unpatched, with MSW-MSA, with RAU-Net and with both;
   time, FLOPs (attention included), peak memory. ``--size 1024x1024`` gives the figures
   in ``docs/benchmarks.md``.
2. ``benchmarks/schedule.py``: a whole sampling run (``--steps``, default 20) unpatched
   and with the Simple presets, per-step times, and a PNG chart of them
   (``--chart``, default ``benchmarks/results/schedule.png``). ``--no-schedule`` skips it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "unet_call.py"
SCHEDULE = ROOT / "benchmarks" / "schedule.py"
DEFAULT_SIZE = "512x512"
SCHEDULE_DEFAULTS = {
    "--steps": "20",
    "--schedule-size": "256x256",
    "--chart": str(ROOT / "benchmarks" / "results" / "schedule.png"),
}
USAGE = (
    "usage: python -m hidiff bench [--size WxH] [--model sd15|sdxl] [--json [PATH]] [--steps N] "
    "[--schedule-size WxH] [--chart PNG] [--no-schedule] [...]; see --help\n"
)


def main(argv: list[str]) -> int:
    """Dispatch ``bench``; anything else prints the usage."""
    if not argv or argv[0] != "bench":
        sys.stderr.write(USAGE)
        return 2
    if not SCRIPT.is_file():
        sys.stderr.write(f"{SCRIPT} is missing: run this from a checkout of the pack\n")
        return 2
    args, schedule_args = split_schedule_args(argv[1:])
    if not any(arg == "--size" or arg.startswith("--size=") for arg in args) and "--help" not in args:
        args = ["--size", DEFAULT_SIZE, *args]
    code = run_script(SCRIPT, args)
    if code != 0 or schedule_args is None or "--help" in args:
        return code
    return run_script(SCHEDULE, schedule_args)


def split_schedule_args(args: list[str]) -> tuple[list[str], list[str] | None]:
    """(unet_call arguments, schedule arguments or None with ``--no-schedule``).

    ``--steps``, ``--schedule-size`` and ``--chart`` go to the schedule run; ``--model``
    and ``--seed`` to both.
    """
    unet_args, options = [], dict(SCHEDULE_DEFAULTS)
    shared, skip, rest = [], False, iter(args)
    for arg in rest:
        if arg == "--no-schedule":
            skip = True
        elif arg in options:
            options[arg] = next(rest)
        else:
            unet_args.append(arg)
            if arg in ("--model", "--seed"):
                value = next(rest)
                unet_args.append(value)
                shared += [arg, value]
    if skip:
        return unet_args, None
    schedule = ["--steps", options["--steps"], "--size", options["--schedule-size"], "--chart", options["--chart"]]
    return unet_args, [*schedule, *shared]


def run_script(script: Path, args: list[str]) -> int:
    """Run a benchmark script as ``__main__`` with ``args``."""
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
