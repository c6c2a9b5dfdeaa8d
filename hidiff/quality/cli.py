"""``python -m hidiff quality ...``: the quality lab's commands.

python -m hidiff quality train --layout sd15|sdxl [--steps N] [--seed S] [--out PATH]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hidiff quality", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a lab model on one-subject scenes (deterministic, CPU)")
    train.add_argument("--layout", choices=("sd15", "sdxl"), required=True)
    train.add_argument("--steps", type=int, default=None, help="training steps (default: the settings' own)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--out", type=Path, default=None, help="where to write the weights (default: the committed file)"
    )
    return parser


def progress(message: str) -> None:
    sys.stderr.write(f"[quality] {message}\n")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from ..bench import comfy_env

    try:
        comfy_env.import_comfyui(cpu=True)
    except comfy_env.ComfyUINotFoundError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    from . import train

    settings = train.TrainSettings(layout=args.layout, seed=args.seed)
    if args.steps is not None:
        settings = train.TrainSettings(layout=args.layout, seed=args.seed, steps=args.steps)
    weights = train.train(settings, progress)
    path = train.save(weights, args.layout, args.out)
    progress(f"wrote {path} (sha256 {train.sha256(path)})")
    return 0
