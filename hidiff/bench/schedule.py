"""A whole sampling run, unpatched vs the Simple presets, step by step.

One UNet call shows the cost while every effect is active; a real run switches RAU-Net
off part-way, so what a user saves depends on the schedule. This samples ``steps`` steps
(euler, cfg 5: cond and uncond batched, as a user's KSampler does) unpatched and with
``ApplyRAUNetSimple`` + ``ApplyMSWMSAAttentionSimple`` (model type ``auto``), timing every
step; the chart makes the points where the CA part and RAU-Net switch off visible.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import machine
from .models import ModelSpec, text_conditioning

RES_MODES = {"low": "low (1024 or lower)", "high": "high (1536-2048)", "ultra": "ultra (over 2048)"}
CFG = 5.0
COLOURS = {"off": (90, 90, 90), "simple": (200, 60, 40)}


@dataclass
class ScheduleResult:
    """Seconds of every step of each run (``off``, ``simple``) and peak memory per run."""

    size: tuple[int, int]
    steps: int
    res_mode: str
    step_seconds: dict[str, list[float]]
    peak_memory_bytes: dict[str, int]

    def total(self, run: str) -> float:
        return sum(self.step_seconds[run])


def simple_presets(pack: dict, base: Any, res_mode: str) -> Any:
    """The model with both Simple nodes, chained as a user would."""
    rau = pack["ApplyRAUNetSimple"].execute(
        model=base,
        model_type="auto",
        res_mode=RES_MODES[res_mode],
        upscale_mode="default",
        ca_upscale_mode="default",
    )
    return pack["ApplyMSWMSAAttentionSimple"].execute(model_type="auto", model=rau.result[0]).result[0]


def time_steps(model: Any, spec: ModelSpec, size: tuple[int, int], steps: int, seed: int) -> tuple[list[float], int]:
    """Seconds of every sampling step of one run, and the run's peak memory."""
    import comfy.sample
    import torch

    width, height = size
    latent = torch.zeros(1, 4, height // 8, width // 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    generator = torch.Generator().manual_seed(seed)
    positive = text_conditioning(spec, generator, width, height)
    negative = text_conditioning(spec, generator, width, height)
    device = model.load_device
    memory = machine.PeakMemory(device)
    memory.reset()
    stamps = [time.perf_counter()]

    def callback(step: int, x0: Any, x: Any, total: int) -> None:
        machine.synchronize(device)
        stamps.append(time.perf_counter())

    with torch.inference_mode():
        comfy.sample.sample(
            model, noise, steps, CFG, "euler", "normal", positive, negative, latent,
            callback=callback, disable_pbar=True, seed=seed,
        )  # fmt: skip
    return [b - a for a, b in zip(stamps, stamps[1:])], memory.peak_bytes()


def run(
    pack: dict, base: Any, spec: ModelSpec, *, size: tuple[int, int], steps: int, res_mode: str, seed: int
) -> ScheduleResult:
    """Both runs with the same noise and conditioning."""
    models = {"off": base, "simple": simple_presets(pack, base, res_mode)}
    seconds, peaks = {}, {}
    for name, model in models.items():
        seconds[name], peaks[name] = time_steps(model, spec, size, steps, seed)
    return ScheduleResult(size, steps, res_mode, seconds, peaks)


def draw_chart(path: Path, runs: dict[str, list[float]], title: str) -> None:
    """A plain line chart of seconds per step (PIL, which ComfyUI already needs)."""
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
    draw.text((margin, 8), title, fill="black")
    draw.text((width // 2 - 20, height - margin + 16), "step", fill="black")
    draw.text((margin, height - margin + 4), "1", fill="black")
    draw.text((width - margin - 8, height - margin + 4), str(steps), fill="black")
    draw.text((4, margin - 16), f"{top:.2f} s", fill="black")
    for row, (name, times) in enumerate(runs.items()):
        colour = COLOURS.get(name, (40, 90, 200))
        draw.line([point(i, t) for i, t in enumerate(times)], fill=colour, width=3)
        draw.text((width - margin - 140, 26 + 12 * row), f"{name}: {sum(times):.1f} s", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
