"""``python -m hidiff quality ...``: the quality lab's commands.

python -m hidiff quality                 the short run: 3x side, unpatched beside HiDiffusion, a picture
python -m hidiff quality --full          every configuration, size and sampler (--json, --grids)
python -m hidiff quality train --layout sd15|sdxl [--steps N] [--seed S] [--out PATH]
python -m hidiff quality diffusers --layout sdxl --scale 3 --seeds 8
                                         the lab model in diffusers: upscale() beside the ComfyUI node
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

SHORT_PICTURE = Path("hidiff-quality.png")


def _scale(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        values = tuple(int(part) for part in (parts * 2 if len(parts) == 1 else parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a scale looks like 3 or 2x3 (height x width), got {text!r}") from None
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"a scale looks like 3 or 2x3 (height x width), got {text!r}")
    return values  # type: ignore[return-value]


def _list(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    from .lab import CONFIG_NAMES, SAMPLERS
    from .models import LAYOUT_NAMES, TRAINED

    parser = argparse.ArgumentParser(
        prog="python -m hidiff quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="the whole matrix (default: the short run)")
    parser.add_argument("--layouts", type=_list(LAYOUT_NAMES), default=None, help="comma list: sdxl,sd15,flux")
    parser.add_argument("--configs", type=_list(CONFIG_NAMES), default=None, help="comma list of configurations")
    parser.add_argument("--scales", type=lambda t: tuple(_scale(p) for p in t.split(",")), default=None,
                        help="comma list of side multiples, e.g. 1,2,3,4,2x3")  # fmt: skip
    parser.add_argument("--samplers", type=_list(SAMPLERS), default=None, help="comma list of samplers")
    parser.add_argument("--seeds", type=int, default=None, help="images per cell (full run: 64, short: 4)")
    parser.add_argument("--json", type=Path, default=None, help="write every row as JSON here")
    parser.add_argument("--grids", type=Path, default=None, help="write PNG grids of samples into this folder")
    parser.add_argument("--markdown", type=Path, default=None, help="write the tables, machine and command here")
    parser.add_argument("--crops", type=Path, default=None,
                        help="write PNGs of the subjects' own channels beside the native samples' into this folder")  # fmt: skip
    parser.add_argument("--picture", type=Path, default=SHORT_PICTURE, help="the short run's picture")
    commands = parser.add_subparsers(dest="command")
    train = commands.add_parser("train", help="train a lab model on one-subject scenes (deterministic, CPU)")
    train.add_argument("--layout", choices=LAYOUT_NAMES, required=True)
    train.add_argument("--steps", type=int, default=None, help="training steps (default: the settings' own)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--out", type=Path, default=None, help="where to write the weights (default: the committed file)"
    )
    compare = commands.add_parser("diffusers", help="the lab model in diffusers: upscale() beside the ComfyUI node")
    compare.add_argument("--layout", choices=TRAINED, default="sdxl")
    compare.add_argument("--scale", type=int, default=3, help="side multiple, a whole number above 1 (default 3)")
    compare.add_argument("--seeds", type=int, default=8, help="images, seeds 0 to N-1 (default 8)")
    compare.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    compare.add_argument("--markdown", type=Path, default=None, help="write the page here")
    compare.add_argument("--picture", type=Path, default=None, help="write the picture (PNG) here")
    return parser


def progress(message: str) -> None:
    sys.stderr.write(f"[quality] {message}\n")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from ..bench import comfy_env

    try:
        comfy_env.import_comfyui(cpu=True)
    except comfy_env.ComfyUINotFoundError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    args = build_parser().parse_args(argv)
    if args.command == "train":
        return _train(args)
    if args.command == "diffusers":
        return _diffusers(args, argv)
    return _lab(args, argv)


def _train(args: argparse.Namespace) -> int:
    from . import train

    fields = {"layout": args.layout, "seed": args.seed} | train.LAYOUT_DEFAULTS.get(args.layout, {})
    fields |= {"steps": args.steps} if args.steps else {}
    settings = train.TrainSettings(**fields)
    weights = train.train(settings, progress)
    path = train.save(weights, args.layout, settings.side, args.out)
    progress(f"wrote {path} (sha256 {train.sha256(path)})")
    return 0


def _lab(args: argparse.Namespace, argv: list[str]) -> int:
    from . import lab, report

    settings = lab.SHORT if not args.full else lab.LabSettings()
    overrides = {
        "layouts": args.layouts,
        "configs": args.configs,
        "scales": args.scales,
        "samplers": args.samplers,
        "seeds": args.seeds,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    try:
        rows, images = lab.run(settings, lambda row: progress(report.format_row(row)))
    except FileNotFoundError as exc:
        progress(str(exc))
        return 2
    sys.stdout.write(report.table(rows) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"settings": report.describe(settings), "rows": rows}, indent=1) + "\n")
        progress(f"wrote {args.json}")
    grids = report.write_grids(images, args.grids) if args.grids else []
    grids += report.write_crops(images, args.crops) if args.crops else []
    for path in grids:
        progress(f"wrote {path}")
    if args.markdown:
        command = "python -m hidiff quality " + " ".join(argv)
        args.markdown.write_text(report.markdown(rows, settings, command, grids, args.markdown.parent))
        progress(f"wrote {args.markdown}")
    if not args.full:
        path = report.short_picture(images, settings, args.picture)
        if path is not None:
            progress(f"wrote {path}")
    return 0


def _diffusers(args: argparse.Namespace, argv: list[str]) -> int:
    import os

    from . import diffusers_lab

    if args.scale < 2 or args.seeds < 1:
        sys.stderr.write("--scale must be 2 or more and --seeds 1 or more\n")
        return 2
    rows, runs = diffusers_lab.compare(args.layout, args.scale, list(range(args.seeds)))
    for row in rows:
        progress(f"{row['run']}: dup {row['duplicate_rate']:.0%}, subjects {row['mean_subjects']:.2f}, "
                 f"IoU {row['median_mask_iou']:.2f}, drawn {row['drawn_detail']:.2f}, {row['seconds_per_image']:.2f} s/img")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    link = None
    if args.picture:
        path = diffusers_lab.picture(runs, args.picture, f"{args.layout} {args.scale}x, seeds 0-{args.seeds - 1}")
        base = args.markdown.parent if args.markdown else Path.cwd()
        link = os.path.relpath(path, base)
    if args.markdown:
        command = "python -m hidiff quality " + " ".join(argv)
        args.markdown.write_text(diffusers_lab.markdown(rows, args.layout, args.scale, command, link))
        progress(f"wrote {args.markdown}")
    return 0
