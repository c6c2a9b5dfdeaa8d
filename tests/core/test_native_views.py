"""Native views (DemoFusion's dilated sampling): how a large latent is cut and put back."""

from __future__ import annotations

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
     ((97, 96), (24, 24), None), ((60, 60), (24, 24), 2), ((63, 60), (24, 24), None)],
)  # fmt: skip
def test_the_stride_is_the_whole_ratio_when_both_sides_divide(size, native, stride):
    assert native_views.view_stride(size, native) == stride


def test_the_blend_is_the_written_out_mix():
    large = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    views = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    mixed = native_views.blend_views(large, views, 2, 0.3)
    expected = large.clone()
    for i in range(2):
        for j in range(2):
            expected[0, :, i::2, j::2] = 0.7 * large[0, :, i::2, j::2] + 0.3 * views[i * 2 + j]
    assert torch.allclose(mixed, expected, atol=1e-6)
    assert native_views.blend_views(large, views, 2, 0.0) is large
