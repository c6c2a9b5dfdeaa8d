"""Lab images as pictures: figures a newcomer can count at a glance, in labelled grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .scenes import APPEARANCE, EYES, MASK, PARTS

BODY = np.array([222, 120, 60], dtype=np.float32)
HEAD = np.array([245, 200, 150], dtype=np.float32)
EYE = np.array([20, 20, 30], dtype=np.float32)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """(H, W, 3) uint8: the background's texture in grey-blue, each subject's body orange,
    its head light, its eyes dark, read with the counter's thresholds."""
    values = image.detach().float().cpu().numpy()
    shade = np.clip(0.5 + 0.35 * values[APPEARANCE], 0.0, 1.0)[..., None]
    rgb = shade * np.array([120, 140, 170], dtype=np.float32)
    subject = values[MASK] > 0
    head = subject & (values[PARTS] > 0)
    eyes = head & (values[EYES] > 0)
    rgb[subject] = BODY * (0.75 + 0.25 * shade[subject])
    rgb[head] = HEAD
    rgb[eyes] = EYE
    return rgb.clip(0, 255).astype(np.uint8)


def grid(rows: list[tuple[str, torch.Tensor]], path: Path, zoom: int = 3, title: str = "") -> Path:
    """One labelled row per (label, images) pair, written as a PNG."""
    from PIL import Image, ImageDraw

    tiles = [[to_rgb(image) for image in images] for _, images in rows]
    height, width = tiles[0][0].shape[:2]
    pad, label_h = 4, 14
    columns = max(len(row) for row in tiles)
    top = label_h if title else 0
    canvas = Image.new(
        "RGB",
        (columns * (width * zoom + pad) + pad, top + len(rows) * (height * zoom + pad + label_h) + pad),
        (250, 250, 250),
    )
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 1), title, fill=(0, 0, 0))
    y = top + pad
    for (label, _), row in zip(rows, tiles, strict=True):
        draw.text((pad, y), label, fill=(0, 0, 0))
        y += label_h
        for column, tile in enumerate(row):
            big = Image.fromarray(tile).resize((width * zoom, height * zoom), Image.NEAREST)
            canvas.paste(big, (pad + column * (width * zoom + pad), y))
        y += height * zoom + pad
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def grey(values: np.ndarray) -> np.ndarray:
    """A channel as uint8 grey, -1.5 black to 1.5 white (the scenes' values lie within)."""
    return (np.clip((values + 1.5) / 3.0, 0.0, 1.0) * 255).astype(np.uint8)


def subject_crops(
    natives: torch.Tensor, rows: list[tuple[str, torch.Tensor]], scale: tuple[int, int], path: Path, zoom: int = 3
) -> Path | None:
    """The subjects themselves, for the eye: per seed, the native sample's subject box (its
    mask, scaled) cut from the native sample (nearest-upscaled) and from each (label, images)
    row's image of that seed, as raw appearance channels, then the same for the eyes channel.
    The grids paint a subject in flat colours; its texture and its eye specks show only here.
    Seeds whose native sample has no subject are left out; None when none has one."""
    from PIL import Image, ImageDraw

    pad, label_h = 4, 14
    strips = []
    for seed, native in enumerate(natives):
        ys, xs = np.nonzero(native[MASK].detach().float().cpu().numpy() > 0)
        if ys.size == 0:
            continue
        top, bottom = ys.min() * scale[0], (ys.max() + 1) * scale[0]
        left, right = xs.min() * scale[1], (xs.max() + 1) * scale[1]
        big_native = native.detach().float().cpu().repeat_interleave(scale[0], -2).repeat_interleave(scale[1], -1)
        sources = [big_native] + [images[seed].detach().float().cpu() for _, images in rows]
        tiles = [grey(source[channel].numpy()[top:bottom, left:right]) for channel in (APPEARANCE, EYES)
                 for source in sources]  # fmt: skip
        strips.append(np.concatenate([np.pad(tile, ((0, 0), (0, pad)), constant_values=250) for tile in tiles], 1))
    if not strips:
        return None
    width = max(strip.shape[1] for strip in strips)
    body = np.concatenate([np.pad(s, ((0, pad), (0, width - s.shape[1])), constant_values=250) for s in strips], 0)
    names = ", ".join(["native (nearest)"] + [label for label, _ in rows])
    title = f"appearance, then eyes; columns: {names}"
    picture = Image.fromarray(body).resize((body.shape[1] * zoom, body.shape[0] * zoom), Image.NEAREST)
    canvas = Image.new("L", (max(picture.width, 6 * len(title)) + 2 * pad, picture.height + label_h + pad), 250)
    ImageDraw.Draw(canvas).text((pad, 1), title, fill=0)
    canvas.paste(picture, (pad, label_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
