"""Time a whole sampling schedule, unpatched vs the Simple presets, step by step.

One UNet call (``unet_call.py``) shows the cost while every effect is active; a real run
switches RAU-Net off part-way, so its saving depends on the schedule. This runs
``comfy.sample.sample`` for ``--steps`` steps (euler, cfg 5: cond and uncond batched) with
the full-size architecture and random weights, unpatched and with
``ApplyRAUNetSimple`` + ``ApplyMSWMSAAttentionSimple`` (auto family, ``--res-mode``), and
prints the total and per-step times. ``--chart PATH`` writes a PNG of the time of every
step for both runs, so the switch-off points are visible.

    python benchmarks/schedule.py --size 256x256 --steps 20 --chart benchmarks/results/schedule.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import unet_call  # noqa: E402  (the sibling script: ComfyUI setup and model building)

RES_MODES = {"low": "low (1024 or lower)", "high": "high (1536-2048)", "ultra": "ultra (over 2048)"}
COLOURS = {"off": (90, 90, 90), "simple": (200, 60, 40)}


def simple_presets(pack: dict, base: Any, res_mode: str) -> Any:
    """The model with both Simple nodes, as a user would chain them."""
    rau = (
        pack["ApplyRAUNetSimple"]
        .execute(
            model=base,
            model_type="auto",
            res_mode=RES_MODES[res_mode],
            upscale_mode="default",
            ca_upscale_mode="default",
        )
        .result[0]
    )
    return pack["ApplyMSWMSAAttentionSimple"].execute(model_type="auto", model=rau).result[0]


def conditioning(spec: Any, seed: int) -> tuple[list, list]:
    """Random text conditioning of the real width (and SDXL's pooled output)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    width = 768 if spec.name == "sd15" else 2048

    def one() -> list:
        extra = {"pooled_output": torch.randn(1, 1280, generator=generator)} if spec.pooled_output else {}
        return [[torch.randn(1, unet_call.CONTEXT_TOKENS, width, generator=generator), extra]]

    return one(), one()


def time_steps(model: Any, spec: Any, size: tuple[int, int], steps: int, seed: int) -> list[float]:
    """Seconds of every sampling step of one run."""
    import comfy.sample
    import torch

    width, height = size
    latent = torch.zeros(1, 4, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive, negative = conditioning(spec, seed)
    stamps = [time.perf_counter()]

    def callback(step: int, x0: Any, x: Any, total: int) -> None:
        stamps.append(time.perf_counter())

    with torch.inference_mode():
        comfy.sample.sample(
            model, noise, steps, 5.0, "euler", "normal", positive, negative, latent,
            callback=callback, disable_pbar=True, seed=seed,
        )  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:])]


def draw_chart(path: Path, runs: dict[str, list[float]], title: str) -> None:
    """A plain line chart of seconds per step (PIL only; no plotting library needed)."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 360, 48
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max(max(times) for times in runs.values()) * 1.1
    steps = max(len(times) for times in runs.values())

    def point(step: int, seconds: float) -> tuple[float, float]:
        x = margin + (width - 2 * margin) * step / max(steps - 1, 1)
        y = height - margin - (height - 2 * margin) * seconds / top
        return x, y

    draw.line([(margin, margin), (margin, height - margin), (width - margin, height - margin)], fill="black")
    draw.text((margin, 12), title, fill="black")
    draw.text((width // 2 - 20, height - margin + 16), "step", fill="black")
    draw.text((4, margin - 16), f"{top:.2f} s", fill="black")
    for row, (name, times) in enumerate(runs.items()):
        colour = COLOURS.get(name, (40, 90, 200))
        draw.line([point(i, t) for i, t in enumerate(times)], fill=colour, width=3)
        draw.text((width - margin - 120, margin + 16 * row), f"{name}: {sum(times):.1f} s", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(unet_call.MODELS), default="sd15")
    parser.add_argument("--size", type=unet_call.parse_size, default=(256, 256), help="WIDTHxHEIGHT (default 256x256)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--res-mode", choices=sorted(RES_MODES), default="high", help="Simple presets' res_mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chart", type=Path, default=None, help="write a PNG chart of per-step times here")
    parser.add_argument("--json", type=Path, default=None, help="write the per-step times as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = unet_call.MODELS[args.model]
    harness, pack = unet_call.setup_comfyui()
    base = unet_call.build_model(harness, spec, args.seed)
    models = {"off": base, "simple": simple_presets(pack, base, args.res_mode)}
    runs = {name: time_steps(model, spec, args.size, args.steps, args.seed) for name, model in models.items()}
    off, simple = sum(runs["off"]), sum(runs["simple"])
    out = sys.stdout.write
    out(
        f"{spec.title}, {args.size[0]}x{args.size[1]} px, {args.steps} steps euler cfg 5, Simple presets res_mode {args.res_mode}\n"
    )
    out(f"{'run':8} {'total s':>9} {'mean step s':>12} {'speed-up':>9}\n")
    for name, times in runs.items():
        out(f"{name:8} {sum(times):9.2f} {sum(times) / len(times):12.3f} {off / sum(times):8.2f}x\n")
    out("per-step seconds:\n")
    for name, times in runs.items():
        out(f"  {name:6} " + " ".join(f"{t:.2f}" for t in times) + "\n")
    title = (
        f"{spec.title} {args.size[0]}x{args.size[1]}: seconds per step (off {off:.1f} s, Simple presets {simple:.1f} s)"
    )
    if args.chart:
        draw_chart(args.chart, runs, title)
        out(f"chart: {args.chart}\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"size": args.size, "steps": args.steps, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
