"""``python -m hidiff bench [options]``: the pack's benchmark (see :mod:`hidiff.bench`)."""

from __future__ import annotations

import sys

USAGE = "usage: python -m hidiff bench [--size WxH] [--model sd15|sdxl] [--steps N] [--json [PATH]] [...]; see --help\n"


def main(argv: list[str]) -> int:
    """Dispatch ``bench``; anything else prints the usage."""
    if not argv or argv[0] != "bench":
        sys.stderr.write(USAGE)
        return 2
    from .bench.cli import main as bench

    return bench(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
