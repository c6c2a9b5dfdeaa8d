"""Reading a lab image back: how many subjects, and whether each is well formed.

A subject is a connected region of the mask channel above 0 whose area reaches a minimum
(a fraction of the smallest subject the models were trained on, in pixels, whatever the
image size: a duplicate at 2x the side is still a subject of the trained size). It is
well formed when it holds exactly one head (a connected region of the parts channel
above 0, large enough) and that head exactly two eyes (4-connected regions of the
eyes channel above :data:`EYE_LEVEL`). See :mod:`hidiff.quality.scenes` for the channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from .scenes import EYES, HEIGHT_RANGE, MASK, PARTS, STRUCTURE

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MIN_SUBJECT_FRACTION = 0.25
"""A region counts as a subject from this fraction of the smallest trained subject's area on."""
MIN_HEAD_FRACTION = 0.2
"""A head region counts from this fraction of the smallest trained head's area on."""
EYE_LEVEL = STRUCTURE / 2
"""An eye pixel is nearer the eyes' +S than the 0 around the head. Read at 0, the lab
model's grain at the head's rim (up to about +0.8) counted as stray eyes: 4 of 4 native
samples read malformed, 1 of 4 at this level; the training scenes read the same at both."""


@dataclass(frozen=True)
class Reading:
    """What the counter read in one image."""

    subjects: int
    well_formed: int
    areas: tuple[int, ...]

    @property
    def duplicated(self) -> bool:
        return self.subjects >= 2

    @property
    def malformed(self) -> int:
        return self.subjects - self.well_formed


def smallest_subject_area(native: int) -> float:
    """Pixel area of the smallest training subject for a native frame side (its body and head)."""
    height = HEIGHT_RANGE[0] * native
    body = math.pi * (0.30 * height) * (0.22 * height)
    head = math.pi * (0.22 * height) ** 2
    return body + head


def smallest_head_area(native: int) -> float:
    return math.pi * (0.22 * HEIGHT_RANGE[0] * native) ** 2


def read(image: torch.Tensor, native: int) -> Reading:
    """Count the subjects of one (4, H, W) image made for models of native side ``native``."""
    values = image.detach().float().cpu().numpy()
    mask = values[MASK] > 0
    labels, found = ndimage.label(mask, structure=EIGHT_CONNECTED)
    min_area = MIN_SUBJECT_FRACTION * smallest_subject_area(native)
    min_head = MIN_HEAD_FRACTION * smallest_head_area(native)
    subjects, well_formed, areas = 0, 0, []
    for index in range(1, found + 1):
        region = labels == index
        area = int(region.sum())
        if area < min_area:
            continue
        subjects += 1
        areas.append(area)
        if _well_formed(values, region, min_head):
            well_formed += 1
    return Reading(subjects, well_formed, tuple(areas))


def _well_formed(values: np.ndarray, region: np.ndarray, min_head: float) -> bool:
    heads, count = ndimage.label((values[PARTS] > 0) & region, structure=EIGHT_CONNECTED)
    sizes = ndimage.sum_labels(np.ones_like(heads), heads, index=range(1, count + 1)) if count else []
    big = [index + 1 for index, size in enumerate(sizes) if size >= min_head]
    if len(big) != 1:
        return False
    head = heads == big[0]
    _, eyes = ndimage.label((values[EYES] > EYE_LEVEL) & ndimage.binary_dilation(head))  # 4-connected: eyes stay apart
    return eyes == 2


def read_all(images: torch.Tensor, native: int) -> list[Reading]:
    return [read(image, native) for image in images]


def mask_iou(first: torch.Tensor, second: torch.Tensor) -> float:
    """Intersection over union of two same-size images' subject masks (the mask channel above
    0): 1 for the same subjects in the same place, and when neither has a subject."""
    a, b = first[MASK] > 0, second[MASK] > 0
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0
