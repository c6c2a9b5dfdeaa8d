"""Reading a lab image back: how many subjects, and whether each is well formed.

A subject is a connected region of the mask channel above 0 whose area reaches a minimum
(a fraction of the smallest subject the models were trained on, in pixels, whatever the
image size: a duplicate at 2x the side is still a subject of the trained size). It is
well formed when it holds exactly one head (a connected region of the parts channel
above 0, large enough) and that head exactly two eyes (4-connected regions of the
eyes channel above :data:`EYE_LEVEL`). See :mod:`hidiff.quality.scenes` for the channels.

Structure at scale (:func:`read_eyes`, :func:`eye_overlap`): above the native size a model
can keep one subject and still draw its face at the trained scale, a head covered in small
eyes. Those read as many eyes here, so an eye counts as *clear* only from a size that grows
with the image (:func:`clear_eye_area`: a fraction of the native samples' median eye,
times the area scale); smaller eye regions inside a head are *specks*, a defect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional

from .scenes import EYES, HEIGHT_RANGE, MASK, PARTS, STRUCTURE, UNET_FACES, Subject

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MIN_SUBJECT_FRACTION = 0.25
"""A region counts as a subject from this fraction of the smallest trained subject's area on."""
MIN_HEAD_FRACTION = 0.2
"""A head region counts from this fraction of the smallest trained head's area on."""
EYE_LEVEL = STRUCTURE / 2
"""An eye pixel is nearer the eyes' +S than the 0 around the head. Read at 0, the lab
model's grain at the head's rim (up to about +0.8) counted as stray eyes: 4 of 4 native
samples read malformed, 1 of 4 at this level; the training scenes read the same at both."""


CLEAR_EYE_FRACTION = 0.3
"""An eye region is clear from this fraction of the native samples' median eye area (times
the area scale) on; below it, a speck."""


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


def smallest_subject(native: int) -> Subject:
    """The smallest training subject for a native frame side, with the smaller (UNet) faces:
    the thresholds below hold for every layout's scenes."""
    return Subject(0.0, 0.0, HEIGHT_RANGE[0] * native, 0.0, 0.0, UNET_FACES)


def smallest_subject_area(native: int) -> float:
    """Pixel area of the smallest training subject for a native frame side (its body and head)."""
    subject = smallest_subject(native)
    return math.pi * math.prod(subject.body) + smallest_head_area(native)


def smallest_head_area(native: int) -> float:
    return math.pi * smallest_subject(native).head_radius ** 2


def read(image: torch.Tensor, native: int) -> Reading:
    """Count the subjects of one (4, H, W) image made for models of native side ``native``."""
    values = image.detach().float().cpu().numpy()
    min_head = MIN_HEAD_FRACTION * smallest_head_area(native)
    subjects = _subjects(values, native)
    well_formed = 0
    for region in subjects:
        heads = _heads(values, region, min_head)
        well_formed += len(heads) == 1 and len(_eye_areas(values, heads[0])) == 2
    return Reading(len(subjects), well_formed, tuple(int(region.sum()) for region in subjects))


def _subjects(values: np.ndarray, native: int) -> list[np.ndarray]:
    """The masks of the subjects: mask-channel regions of at least the minimum subject area."""
    labels, found = ndimage.label(values[MASK] > 0, structure=EIGHT_CONNECTED)
    min_area = MIN_SUBJECT_FRACTION * smallest_subject_area(native)
    regions = (labels == index for index in range(1, found + 1))
    return [region for region in regions if region.sum() >= min_area]


def _heads(values: np.ndarray, region: np.ndarray, min_head: float) -> list[np.ndarray]:
    """The masks of the heads inside one subject: parts-channel regions of at least ``min_head``."""
    heads, count = ndimage.label((values[PARTS] > 0) & region, structure=EIGHT_CONNECTED)
    sizes = ndimage.sum_labels(np.ones_like(heads), heads, index=range(1, count + 1)) if count else []
    return [heads == index + 1 for index, size in enumerate(sizes) if size >= min_head]


def _eye_areas(values: np.ndarray, head: np.ndarray) -> list[int]:
    """The pixel areas of the eye regions of one head (4-connected, so eyes stay apart)."""
    eyes, count = ndimage.label((values[EYES] > EYE_LEVEL) & ndimage.binary_dilation(head))
    if not count:
        return []
    return [int(area) for area in ndimage.sum_labels(np.ones_like(eyes), eyes, index=range(1, count + 1))]


def read_all(images: torch.Tensor, native: int) -> list[Reading]:
    return [read(image, native) for image in images]


def mask_iou(first: torch.Tensor, second: torch.Tensor) -> float:
    """Intersection over union of two same-size images' subject masks (the mask channel above
    0): 1 for the same subjects in the same place, and when neither has a subject."""
    a, b = first[MASK] > 0, second[MASK] > 0
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


@dataclass(frozen=True)
class Eyes:
    """The eyes one image's heads hold, read at the image's scale."""

    clear: int
    """Eye regions inside heads of at least the clear area."""
    specks: int
    """Eye regions inside heads below it: eyes drawn at the trained scale on an enlarged head."""
    two_eyed: bool
    """Exactly one subject, with exactly one head, holding exactly two clear eyes."""


def eye_areas(image: torch.Tensor, native: int) -> list[int]:
    """The pixel area of every eye region of every head in one image (made for native side
    ``native``); the native samples' areas give the eye size :func:`clear_eye_area` scales."""
    values = image.detach().float().cpu().numpy()
    min_head = MIN_HEAD_FRACTION * smallest_head_area(native)
    return [
        area
        for region in _subjects(values, native)
        for head in _heads(values, region, min_head)
        for area in _eye_areas(values, head)
    ]


def clear_eye_area(native_areas: list[int], area_scale: float) -> float:
    """The least area of a clear eye in an image ``area_scale`` times the native area (4x the
    side: 16): :data:`CLEAR_EYE_FRACTION` of the native samples' median eye, scaled."""
    if not native_areas:
        raise ValueError("the native samples hold no eyes to measure the eye size from")
    return CLEAR_EYE_FRACTION * float(np.median(native_areas)) * area_scale


def read_eyes(image: torch.Tensor, native: int, min_eye_area: float) -> Eyes:
    """The clear eyes and the specks of one image's heads (:func:`clear_eye_area` gives
    ``min_eye_area``)."""
    values = image.detach().float().cpu().numpy()
    min_head = MIN_HEAD_FRACTION * smallest_head_area(native)
    subjects = _subjects(values, native)
    heads = [head for region in subjects for head in _heads(values, region, min_head)]
    clear_per_head = []
    specks = 0
    for head in heads:
        areas = _eye_areas(values, head)
        clear_per_head.append(sum(area >= min_eye_area for area in areas))
        specks += len(areas) - clear_per_head[-1]
    two_eyed = len(subjects) == 1 and clear_per_head == [2]
    return Eyes(sum(clear_per_head), specks, two_eyed)


def eye_map(image: torch.Tensor) -> torch.Tensor:
    """Where one (4, H, W) image draws eyes: the eyes channel above :data:`EYE_LEVEL`."""
    return image[EYES] > EYE_LEVEL


def eye_overlap(image: torch.Tensor, native_image: torch.Tensor) -> float:
    """Intersection over union of ``image``'s eye map and that of the native sample of the
    same seed bicubic-upscaled to its size (as the Hires Fix node upscales it): 1 when the
    large pass kept the native eyes where they were and drew no others; NaN when neither
    has an eye."""
    size = tuple(image.shape[-2:])
    upscaled = functional.interpolate(native_image[None].float(), size=size, mode="bicubic", align_corners=False)[0]
    mine, theirs = eye_map(image.float()), eye_map(upscaled)
    union = int((mine | theirs).sum())
    return int((mine & theirs).sum()) / union if union else float("nan")
