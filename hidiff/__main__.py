"""``python -m hidiff bench [options]``: the pack's benchmark, with a default size that
finishes in a few minutes on a small CPU.

It runs ``benchmarks/unet_call.py`` from this checkout (see ``benchmarks/README.md``):
one UNet call of the full SD1.5 (or ``--model sdxl``) architecture with random weights,
unpatched, with MSW-MSA, with RAU-Net and with both; time, FLOPs (attention included),
peak memory. ``--size 1024x1024`` gives the figures in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "unet_call.py"
DEFAULT_SIZE = "512x512"
USAGE = "usage: python -m hidiff bench [--size WxH] [--model sd15|sdxl] [--json [PATH]] [...]; see --help\n"


def main(argv: list[str]) -> int:
    """Dispatch ``bench``; anything else prints the usage."""
    if not argv or argv[0] != "bench":
        sys.stderr.write(USAGE)
        return 2
    if not SCRIPT.is_file():
        sys.stderr.write(f"{SCRIPT} is missing: run this from a checkout of the pack\n")
        return 2
    args = argv[1:]
    if not any(arg == "--size" or arg.startswith("--size=") for arg in args) and "--help" not in args:
        args = ["--size", DEFAULT_SIZE, *args]
    sys.argv = [str(SCRIPT), *args]
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
