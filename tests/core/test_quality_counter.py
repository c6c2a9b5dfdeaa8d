"""The quality lab's subject counter, validated on scenes whose truth is known.

Exact on the training distribution (one well-formed subject per scene) and on composed
frames with N subjects; and it fails the way it should when a subject loses a part.
"""

from __future__ import annotations

import math

import pytest
import torch

from hidiff.quality import counter, scenes

NATIVE = 32


FACES = [scenes.UNET_FACES, scenes.DIT_FACES]


@pytest.mark.parametrize("face", FACES, ids=["unet", "dit"])
def test_every_training_scene_reads_as_one_well_formed_subject(face):
    readings = [counter.read(scenes.scene(seed, NATIVE, NATIVE, face)[0], NATIVE) for seed in range(400)]
    assert [(r.subjects, r.well_formed) for r in readings] == [(1, 1)] * 400


@pytest.mark.parametrize("side", [32, 48])
def test_dit_scenes_draw_every_eye_over_a_2x2_patch(side):
    """The DiT layouts' faces: at the native side and above, each eye covers at least the
    pixels of one 2x2 patch, and at least twice the UNet faces' smallest eye."""
    smallest = {
        face: min(min(counter.eye_areas(scenes.scene(seed, side, side, face)[0], NATIVE)) for seed in range(100))
        for face in FACES
    }
    assert smallest[scenes.DIT_FACES] >= max(2 * 2, 2 * smallest[scenes.UNET_FACES])


@pytest.mark.parametrize("face", FACES, ids=["unet", "dit"])
@pytest.mark.parametrize(
    ("height", "width", "count"), [(64, 64, 1), (64, 64, 4), (64, 96, 2), (64, 96, 6), (96, 96, 5), (96, 96, 9)]
)
def test_composed_frames_read_as_their_subject_count(height, width, count, face):
    for seed in range(40):
        image, placed = scenes.composed_scene(seed, height, width, count, NATIVE, face)
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


def _enlarged(seed: int, native: int, scale: int) -> tuple[torch.Tensor, torch.Tensor, scenes.Subject]:
    """A native scene and the same subject drawn at ``scale`` times the side (a head
    ``scale``² times larger, with eyes of the same proportion: structure kept at scale)."""
    image, subject = scenes.scene(seed, native, native)
    big = scenes.Subject(subject.y * scale, subject.x * scale, subject.height * scale, subject.tilt, subject.colour)
    background = scenes.background(torch.Generator().manual_seed(seed), native * scale, native * scale)
    return image, scenes.draw(background, big), big


def _speckled(image: torch.Tensor, spacing: int, keep_eyes: bool) -> tuple[torch.Tensor, int]:
    """``image`` with one-pixel eyes on a ``spacing`` lattice over its head (the trained-scale
    eyes a model draws on an enlarged head); its own eyes kept or painted over. Returns the
    image and the number of specks drawn."""
    out = image.clone()
    head = (out[scenes.PARTS] > 0) & (out[scenes.MASK] > 0)
    if not keep_eyes:
        out[scenes.EYES] = torch.where(head, -scenes.STRUCTURE, out[scenes.EYES])
    eyes = out[scenes.EYES] > 0
    near_eye = torch.nn.functional.max_pool2d(eyes[None, None].float(), 5, 1, 2)[0, 0] > 0
    rows, cols = torch.meshgrid(torch.arange(out.shape[1]), torch.arange(out.shape[2]), indexing="ij")
    lattice = (rows % spacing == 0) & (cols % spacing == 0)
    inner = torch.nn.functional.max_pool2d((~head)[None, None].float(), 3, 1, 1)[0, 0] == 0  # away from the rim
    specks = lattice & inner & ~near_eye
    out[scenes.EYES] = torch.where(specks, scenes.STRUCTURE, out[scenes.EYES])
    return out, int(specks.sum())


def test_a_head_drawn_at_4x_holds_two_clear_eyes_and_no_specks():
    native_side, scale = 24, 4
    natives = [scenes.scene(seed, native_side, native_side)[0] for seed in range(8)]
    native_areas = [area for image in natives for area in counter.eye_areas(image, native_side)]
    min_area = counter.clear_eye_area(native_areas, scale * scale)
    for seed in range(8):
        native, enlarged, _ = _enlarged(seed, native_side, scale)
        assert counter.read_eyes(native, native_side, counter.clear_eye_area(native_areas, 1)) == counter.Eyes(
            2, 0, True
        )
        assert counter.read_eyes(enlarged, native_side, min_area) == counter.Eyes(2, 0, True), seed
        # the native eyes are too small to be clear at 4x: a native-size head read at 4x's threshold
        assert counter.read_eyes(native, native_side, min_area).clear == 0


def test_a_head_covered_in_trained_scale_eyes_reads_as_specks_not_two_eyes():
    native_side, scale = 24, 4
    native_areas = [area for seed in range(8) for area in counter.eye_areas(scenes.scene(seed, 24, 24)[0], 24)]
    min_area = counter.clear_eye_area(native_areas, scale * scale)
    _, enlarged, _ = _enlarged(2, native_side, scale)
    field, drawn = _speckled(enlarged, 3, keep_eyes=False)
    assert drawn >= 30
    assert counter.read_eyes(field, native_side, min_area) == counter.Eyes(0, drawn, False)
    assert counter.read(field, native_side).malformed == 1  # composition read: many eyes, malformed
    both, drawn = _speckled(enlarged, 3, keep_eyes=True)
    assert counter.read_eyes(both, native_side, min_area) == counter.Eyes(2, drawn, True)


def test_eye_overlap_is_high_for_the_native_eyes_kept_and_low_for_a_field_of_eyes():
    native, enlarged, _ = _enlarged(2, 24, 4)
    upscaled = torch.nn.functional.interpolate(native[None], scale_factor=4, mode="bicubic")[0]
    assert counter.eye_overlap(upscaled, native) == 1.0
    kept = counter.eye_overlap(enlarged, native)
    field, _ = _speckled(enlarged, 3, keep_eyes=False)
    lost = counter.eye_overlap(field, native)
    assert kept > 0.5 and lost < 0.1, (kept, lost)
    no_eyes = scenes.background(torch.Generator().manual_seed(0), 96, 96)
    assert math.isnan(counter.eye_overlap(no_eyes, scenes.background(torch.Generator().manual_seed(1), 24, 24)))


def test_the_clear_eye_size_needs_native_eyes():
    with pytest.raises(ValueError, match="no eyes"):
        counter.clear_eye_area([], 16)
    assert counter.clear_eye_area([4, 6, 100], 16) == pytest.approx(counter.CLEAR_EYE_FRACTION * 6 * 16)
