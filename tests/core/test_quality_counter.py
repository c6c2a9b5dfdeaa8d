"""The quality lab's subject counter, validated on scenes whose truth is known.

Exact on the training distribution (one well-formed subject per scene) and on composed
frames with N subjects; and it fails the way it should when a subject loses a part.
"""

from __future__ import annotations

import pytest
import torch

from hidiff.quality import counter, scenes

NATIVE = 32


def test_every_training_scene_reads_as_one_well_formed_subject():
    readings = [counter.read(scenes.scene(seed, NATIVE, NATIVE)[0], NATIVE) for seed in range(400)]
    assert [(r.subjects, r.well_formed) for r in readings] == [(1, 1)] * 400


@pytest.mark.parametrize(
    ("height", "width", "count"), [(64, 64, 1), (64, 64, 4), (64, 96, 2), (64, 96, 6), (96, 96, 5), (96, 96, 9)]
)
def test_composed_frames_read_as_their_subject_count(height, width, count):
    for seed in range(40):
        image, placed = scenes.composed_scene(seed, height, width, count, NATIVE)
        reading = counter.read(image, NATIVE)
        assert len(placed) == count
        assert (reading.subjects, reading.well_formed) == (count, count), seed
        assert reading.duplicated == (count >= 2)


def test_a_subject_without_eyes_or_with_a_second_head_is_malformed():
    image, subject = scenes.scene(3, NATIVE, NATIVE)
    no_eyes = image.clone()
    no_eyes[scenes.EYES] = torch.where(no_eyes[scenes.EYES] > 0, -1.0, no_eyes[scenes.EYES])
    assert counter.read(no_eyes, NATIVE).malformed == 1
    second_head = image.clone()
    mask = (second_head[scenes.MASK] > 0) & (second_head[scenes.PARTS] < 0)  # the body
    rows = mask.any(1).nonzero().flatten()
    lowest = rows[-3:]  # the bottom of the body becomes a second, separate head
    second_head[scenes.PARTS, lowest] = torch.where(mask[lowest], 1.0, second_head[scenes.PARTS, lowest])
    assert counter.read(second_head, NATIVE).malformed == 1
    assert counter.read(image, NATIVE).malformed == 0  # the unedited scene stays well formed


def test_specks_below_the_minimum_area_are_not_subjects():
    image, _ = scenes.scene(5, NATIVE, NATIVE)
    speck = image.clone()
    speck[scenes.MASK, 0:2, 0:2] = 1.0  # a 4 px blob in a corner
    assert counter.read(speck, NATIVE).subjects == 1


def test_scenes_are_the_same_for_the_same_seed_in_every_call():
    assert torch.equal(scenes.scene(11, NATIVE, NATIVE)[0], scenes.scene(11, NATIVE, NATIVE)[0])
    assert not torch.equal(scenes.scene(11, NATIVE, NATIVE)[0], scenes.scene(12, NATIVE, NATIVE)[0])


def test_grain_at_the_heads_rim_is_not_read_as_eyes():
    """The lab model leaves grain up to about +0.8 in the eyes channel around a head
    (measured on native samples); eyes are read from half the structure amplitude on."""
    from scipy import ndimage

    image, _ = scenes.scene(3, NATIVE, NATIVE)
    head = ((image[scenes.PARTS] > 0) & (image[scenes.MASK] > 0)).numpy()
    rim = torch.from_numpy(ndimage.binary_dilation(head) & ~head)
    checker = (torch.arange(NATIVE)[:, None] + torch.arange(NATIVE)[None, :]) % 2 == 0  # apart, 4-connected
    grainy = image.clone()
    grainy[scenes.EYES] = torch.where(rim & checker, 0.8, grainy[scenes.EYES])
    assert int((rim & checker).sum()) >= 4
    assert counter.read(grainy, NATIVE).malformed == 0
    grainy[scenes.EYES] = torch.where(rim & checker, counter.EYE_LEVEL + 0.1, grainy[scenes.EYES])
    assert counter.read(grainy, NATIVE).malformed == 1  # above the level they are stray eyes
