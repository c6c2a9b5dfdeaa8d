"""The lab's reading of images beyond counting: the pictures and the detail score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hidiff.quality import counter, lab, pictures, scenes

NATIVE = 32


def test_the_picture_shows_what_the_counter_reads():
    """Every pixel the counter calls subject is drawn in body, head or eye colours, the
    background never is, and the eyes are the dark pixels inside the head."""
    image, _ = scenes.scene(4, NATIVE, NATIVE)
    rgb = pictures.to_rgb(image).astype(int)
    subject = (image[scenes.MASK] > 0).numpy()
    eyes = ((image[scenes.EYES] > 0) & (image[scenes.PARTS] > 0) & (image[scenes.MASK] > 0)).numpy()
    assert (rgb[eyes] == pictures.EYE).all()
    orange = rgb[..., 0] > rgb[..., 2] + 40  # body and head are warm, the background cool
    assert (orange[subject & ~eyes]).all() and not orange[~subject].any()


def test_grid_writes_one_row_per_configuration(tmp_path):
    images = scenes.batch(range(3), NATIVE, NATIVE)
    path = pictures.grid([("a", images), ("b", images[:2])], tmp_path / "g.png", zoom=2, title="t")
    from PIL import Image

    width, height = Image.open(path).size
    assert width == 3 * (NATIVE * 2 + 4) + 4
    assert height > 2 * NATIVE * 2


def test_crops_cut_each_seeds_subject_box_from_every_row(tmp_path):
    """Per seed, the native subject's box scaled to the large image: the native
    nearest-upscaled, then each row's image, appearance then eyes, as grey values."""
    from PIL import Image

    natives = scenes.batch(range(2), NATIVE, NATIVE)
    large = natives.repeat_interleave(3, -2).repeat_interleave(3, -1).clone()
    large[:, scenes.APPEARANCE] = 1.5  # white: tells the row from the native column
    path = pictures.subject_crops(natives, [("large", large)], (3, 3), tmp_path / "c.png", zoom=1)
    picture = np.asarray(Image.open(path))
    ys, xs = np.nonzero(natives[0, scenes.MASK].numpy() > 0)
    box_h, box_w = 3 * (ys.max() + 1 - ys.min()), 3 * (xs.max() + 1 - xs.min())
    strip = picture[14 : 14 + box_h, 4:]
    native_appearance = pictures.grey(
        natives[0, scenes.APPEARANCE].numpy()[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    )
    assert (strip[:, :box_w] == native_appearance.repeat(3, 0).repeat(3, 1)).all()
    assert (strip[:, box_w + 4 : 2 * box_w + 4] == 255).all()
    eyes = strip[:, 2 * (box_w + 4) : 3 * box_w + 8]
    assert (
        (eyes > 200)
        == (natives[0, scenes.EYES].numpy()[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] > 0)
        .repeat(3, 0)
        .repeat(3, 1)
    ).all()
    empty = scenes.background(torch.Generator().manual_seed(0), NATIVE, NATIVE)[None]
    assert pictures.subject_crops(empty, [("large", empty)], (1, 1), tmp_path / "e.png") is None


def test_detail_energy_sees_a_blurred_subject():
    """The detail score falls when the subject's texture is smoothed, as an upscaled
    native sample's would be; and it is NaN with no subject."""
    image, _ = scenes.scene(2, 3 * NATIVE, 3 * NATIVE)
    sharp = lab.detail_energy(image)
    blurred = image.clone()
    kernel = torch.ones(1, 1, 3, 3) / 9
    blurred[scenes.APPEARANCE] = torch.nn.functional.conv2d(image[None, None, scenes.APPEARANCE], kernel, padding=1)[
        0, 0
    ]
    assert lab.detail_energy(blurred) < 0.5 * sharp
    empty = scenes.background(torch.Generator().manual_seed(0), NATIVE, NATIVE)
    assert math.isnan(lab.detail_energy(empty))


def test_cells_count_duplicates_malformed_and_empty_images():
    readings = [
        counter.Reading(1, 1, (100,)),
        counter.Reading(2, 2, (90, 80)),
        counter.Reading(1, 0, (70,)),
        counter.Reading(0, 0, ()),
    ]
    cell = lab.Cell("unpatched", "sdxl", "euler", 256, 256)
    cell.add(readings, [1.0, 2.0, float("nan"), float("nan")])
    figures = cell.figures(native_detail=2.0)
    assert figures["duplicate_rate"] == 0.25 and figures["malformed_rate"] == 0.25
    assert figures["empty_rate"] == 0.25 and figures["one_good_rate"] == 0.25
    assert figures["mean_subjects"] == 1.0 and np.isclose(figures["detail"], 0.75)


def test_the_median_detail_is_per_seed_and_not_carried_by_a_few_images():
    """Native samples of seeds 0-3 read 3.6, 5.8, 0.09 and 0.41 on the SDXL-layout model:
    the mean is carried by two of them. The median of per-seed ratios is not."""
    native = [3.6, 5.8, 0.09, 0.41, float("nan")]
    cell = lab.Cell("guided", "sdxl", "euler", 256, 256)
    cell.add([counter.Reading(1, 1, (100,))] * 5, [0.36, 5.8, 0.18, 0.82, 1.0])
    figures = cell.figures(native_detail=sum(native[:4]) / 4, native_images=native)
    assert np.isclose(figures["median_detail"], 1.5)  # ratios 0.1, 1, 2, 2: the NaN seed is left out
    assert figures["detail"] < 1.0  # the mean says "less detail than native"
    assert math.isnan(cell.figures(native_detail=1.0)["median_detail"])


def test_drawn_detail_reads_no_upscaler_blocks_and_native_texture_at_any_scale():
    """Nearest-exact blocks carry sharp edges the Laplacian score counts as detail; the drawn
    score reads them as 0. A scene drawn at 3x the side (its texture at the native pixel
    scale) reads about what the native scene reads, on the grid or off it."""
    native, _ = scenes.scene(2, NATIVE, NATIVE)
    blocks = torch.nn.functional.interpolate(native[None], scale_factor=3, mode="nearest-exact")[0]
    assert lab.detail_energy(blocks) > 0.3 * lab.detail_energy(native)  # the edges read as detail
    assert lab.drawn_detail_energy(blocks, (3, 3)) == 0.0
    assert lab.drawn_detail_energy(blocks) > 0.0  # off the grid the edges count again
    drawn, _ = scenes.scene(2, 3 * NATIVE, 3 * NATIVE)
    on_grid = lab.drawn_detail_energy(drawn, (3, 3))
    assert 0.7 < on_grid / lab.drawn_detail_energy(native) < 1.4
    assert np.isclose(on_grid, lab.drawn_detail_energy(drawn), rtol=0.1)
    cell = lab.Cell("hires_fix", "sdxl", "euler", 256, 256)
    cell.add([counter.Reading(1, 1, (100,))] * 2, [1.0, 1.0], [lab.drawn_detail_energy(blocks, (3, 3)), on_grid])
    native_drawn = [lab.drawn_detail_energy(native)] * 2
    assert np.isclose(
        cell.figures(native_images=[1.0, 1.0], native_drawn=native_drawn)["drawn_detail"], on_grid / native_drawn[0] / 2
    )


def test_cells_report_structure_at_scale():
    """Two-eyed rate, clear eyes and specks per image, and the median eye overlap (NaN
    overlaps, images without eyes on either side, left out)."""
    cell = lab.Cell("guided", "sd15", "euler", 768, 768)
    assert math.isnan(cell.figures()["two_eyed_rate"])
    eyes = [counter.Eyes(2, 0, True), counter.Eyes(0, 19, False), counter.Eyes(2, 3, True), counter.Eyes(1, 0, False)]
    cell.add_structure(eyes, [0.8, 0.1, float("nan"), 0.5])
    figures = cell.figures()
    assert figures["two_eyed_rate"] == 0.5
    assert figures["clear_eyes"] == 1.25 and figures["specks"] == 5.5
    assert figures["eye_overlap"] == 0.5


def test_the_lab_reads_structure_against_the_native_sample_of_each_seed():
    """read_structure scales the clear-eye size with the area and pairs each image with the
    native sample of its own seed."""
    native = 24
    natives = torch.stack([scenes.scene(seed, native, native)[0] for seed in range(3)])
    upscaled = torch.nn.functional.interpolate(natives, scale_factor=2, mode="bicubic")
    native_eyes = [area for image in natives for area in counter.eye_areas(image, native)]
    cell = lab.Cell("guided", "sd15", "euler", 384, 384)
    lab.read_structure(cell, upscaled, natives, native, native_eyes, (2, 2))
    assert cell.figures()["eye_overlap"] == 1.0
    shuffled = lab.Cell("guided", "sd15", "euler", 384, 384)
    lab.read_structure(shuffled, upscaled, natives.flip(0), native, native_eyes, (2, 2))
    assert shuffled.figures()["eye_overlap"] < 0.5
    min_area = counter.clear_eye_area(native_eyes, 4)
    assert [counter.read_eyes(image, native, min_area) for image in upscaled] == cell.eyes
    assert cell.eyes != [counter.read_eyes(image, native, counter.clear_eye_area(native_eyes, 1)) for image in upscaled]


@pytest.mark.parametrize(("layout", "face"), [("flux", scenes.DIT_FACES), ("sdxl", scenes.UNET_FACES)])
def test_each_layout_trains_on_its_own_faces(layout, face):
    from hidiff.quality import train

    settings = train.TrainSettings(layout=layout, dataset=4)
    drawn = scenes.batch(range(4), NATIVE, NATIVE, face)
    other = scenes.DIT_FACES if face == scenes.UNET_FACES else scenes.UNET_FACES
    assert torch.equal(train.dataset(settings, NATIVE, scenes.CHANNELS), drawn)
    assert not torch.equal(scenes.batch(range(4), NATIVE, NATIVE, other), drawn)
