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
