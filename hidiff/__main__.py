"""``python -m hidiff bench|quality [options]``: the benchmark (:mod:`hidiff.bench`) and the
quality lab (:mod:`hidiff.quality`)."""

from __future__ import annotations

import sys

USAGE = (
    "usage: python -m hidiff bench [--size WxH] [--model sd15|sdxl] [--steps N] [--json [PATH]] [...]\n"
    "       python -m hidiff quality [--full] [...] | quality train --layout sd15|sdxl; see --help of each\n"
)


def main(argv: list[str]) -> int:
    """Dispatch ``bench`` or ``quality``; anything else prints the usage."""
    if argv and argv[0] == "bench":
        from .bench.cli import main as bench

        return bench(argv[1:])
    if argv and argv[0] == "quality":
        from .quality.cli import main as quality

        return quality(argv[1:])
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
