"""Native views (DemoFusion's dilated sampling): how a large latent is cut and put back."""

from __future__ import annotations

import math

import pytest
import torch

from hidiff.core import native_views


def test_view_ij_of_image_b_is_the_strided_slice_and_the_cut_is_undone_exactly():
    x = torch.randn(3, 4, 12, 18, generator=torch.Generator().manual_seed(0))
    views = native_views.to_views(x, 3)
    assert views.shape == (27, 4, 4, 6)
    for b in range(3):
        for i in range(3):
            for j in range(3):
                assert torch.equal(views[b * 9 + i * 3 + j], x[b, :, i::3, j::3])
    assert torch.equal(native_views.from_views(views, 3), x)


def test_per_image_values_are_repeated_in_view_order():
    sigma = torch.tensor([5.0, 7.0])
    assert native_views.repeat_per_view(sigma, 2).tolist() == [5.0] * 4 + [7.0] * 4


@pytest.mark.parametrize(
    ("size", "native", "stride"),
    [((96, 96), (24, 24), 4), ((72, 96), (24, 32), 3), ((64, 64), (32, 32), 2), ((48, 48), (48, 48), None),
     ((97, 96), (24, 24), 4), ((60, 60), (24, 24), 2), ((84, 60), (24, 24), 2), ((36, 36), (24, 24), None),
     ((112, 112), (32, 32), 3)],
)  # fmt: skip
def test_the_stride_is_the_whole_smaller_side_ratio_from_2(size, native, stride):
    assert native_views.view_stride(size, native) == stride


def test_a_side_that_does_not_divide_is_mirrored_up_to_one_that_does():
    x = torch.arange(2 * 7 * 5, dtype=torch.float32).view(1, 2, 7, 5)
    assert native_views.padding_for((7, 5), 3) == (2, 1)
    grown = native_views.padded(x, 3)
    assert grown.shape == (1, 2, 9, 6)
    assert torch.equal(grown[..., :7, :5], x)
    assert torch.equal(grown[..., 7, :5], x[..., 5, :]) and torch.equal(grown[..., 8, :5], x[..., 4, :])
    assert torch.equal(grown[..., :7, 5], x[..., :, 3])
    assert native_views.padded(x[..., :6, :], 3) is not None and native_views.padded(x[..., :6, :3], 3).shape[-2:] == (
        6,
        3,
    )


def test_the_blend_is_the_written_out_mix():
    large = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    placed = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(native_views.blend(large, placed, 0.3), 0.7 * large + 0.3 * placed)


@pytest.mark.parametrize("level", [1.0, 0.8, 0.5, 0.1, 0.0])
def test_the_input_blur_follows_demofusions_cosine_ramp(level):
    ramp = 0.5 * (1 + math.cos(math.pi * (1 - level)))
    assert native_views.input_blur(level, 2.0) == pytest.approx(2.0 * (0.99 * ramp + 0.01))


def written_out_gaussian(x: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Each pixel: the Gaussian-weighted mean of its (2r+1)^2 neighbours, borders mirrored."""
    taps = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(taps)
    height, width = x.shape[-2:]

    def mirror(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = torch.zeros_like(x)
    for r in range(height):
        for c in range(width):
            for a, wa in zip(range(-radius, radius + 1), taps):
                for b, wb in zip(range(-radius, radius + 1), taps):
                    out[..., r, c] += wa * wb / total**2 * x[..., mirror(r + a, height), mirror(c + b, width)]
    return out


def test_the_views_input_is_the_written_out_gaussian_restandardised_per_channel():
    """Each channel keeps its own mean and std; re-standardised per image, a channel far from
    the image's mean (channel 2 here) would come out further from it."""
    x = torch.randn(2, 4, 9, 10, generator=torch.Generator().manual_seed(3))
    x[1] = x[1] * 3.0 + 1.0
    x[:, 2] += 4.0
    blurred = native_views.gaussian_blur(x, 3, 1.5)
    low = written_out_gaussian(x, 2, 1.5)
    torch.testing.assert_close(native_views.gaussian_low(x, 3, 1.5), low, atol=1e-5, rtol=1e-5)
    for b in range(2):
        for c in range(4):
            expected = (low[b, c] - low[b, c].mean()) / low[b, c].std() * x[b, c].std() + x[b, c].mean()
            torch.testing.assert_close(blurred[b, c], expected, atol=1e-5, rtol=1e-5)
    per_image = (low[0] - low[0].mean()) / low[0].std() * x[0].std() + x[0].mean()
    assert float((per_image[2].mean() - x[0, 2].mean()).abs()) > 100 * 1e-5, "the two must differ"
    assert float((blurred - x).abs().max()) > 0.5, "the blur must change the noise it is given"
    assert native_views.gaussian_blur(x, 3, 0.0) is x


def test_degrain_takes_out_each_views_smooth_offset_and_keeps_the_image():
    """A smooth image plus a slowly varying offset per view (the grid the views leave): degrain
    gives back about the smooth image, and leaves the smooth image alone about as it is."""
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 48), torch.linspace(0, 1, 48), indexing="ij")
    image = torch.stack([torch.sin(3 * rows + 2 * cols), torch.cos(2 * rows - cols)]).unsqueeze(0)
    offsets = torch.zeros_like(image)
    generator = torch.Generator().manual_seed(5)
    levels = torch.randn(4, 4, 2, 1, 1, generator=generator)
    levels -= levels.mean(dim=(0, 1))  # the views' common part is the image's, not grain
    for i in range(4):
        for j in range(4):
            offsets[0, :, i::4, j::4] = levels[i, j] * (1 + 0.3 * rows[i::4, j::4])
    gridded = image + 0.3 * offsets
    cleaned = native_views.degrain(gridded, 4, 1.0)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    before = float((gridded - image)[inner].abs().mean())
    after = float((cleaned - image)[inner].abs().mean())
    assert after < 0.2 * before, (before, after)
    assert float((native_views.degrain(image, 4, 1.0) - image)[inner].abs().max()) < 0.02


def test_the_views_of_a_latent_that_does_not_divide_come_back_at_its_size():
    """A 7x10 latent at stride 3: mirrored to 9x12, cut into 9 views of 3x4, put back and cropped."""
    x = torch.randn(2, 4, 7, 10, generator=torch.Generator().manual_seed(6))
    views = native_views.views_input(x, 3, 0.0, 0.0)
    assert views.shape == (18, 4, 3, 4)
    torch.testing.assert_close(native_views.views_prediction(views, 3, (7, 10), 0.0), x)
