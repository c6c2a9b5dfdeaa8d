"""RAU-Net operators (pure torch, no ComfyUI)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from hidiff.core.presets import RAUNET_PRESETS
from hidiff.core.raunet import (
    CA_DOWNSCALE_METHODS,
    UPSCALE_METHODS,
    ResizeError,
    ca_downscale,
    downscaled_size,
    faded_factor,
    fadeout_strength,
    halfway_size,
    rad_size,
    resize,
    resolution_aware_downsample,
    sigma_to_percent,
    upscale,
)
from hidiff.core.unet_map import BlockInfo, Family, UNetMap

SIZES = [(8, 8), (9, 13), (37, 53), (45, 29), (125, 187), (1, 1), (2, 3), (5, 4)]


def fake_host(x: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """The host's resampler for methods torch lacks (ComfyUI's bislerp here)."""
    assert mode == "bislerp"
    return F.interpolate(x, size=(height, width), mode="bilinear")


def stock_downsample(channels: int = 4, seed: int = 0) -> torch.nn.Conv2d:
    torch.manual_seed(seed)
    return torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1)


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_rad_is_bit_identical_to_the_dilated_stride4_conv(height, width):
    conv = stock_downsample()
    x = torch.randn(2, 4, height, width, generator=torch.Generator().manual_seed(height * 1000 + width))
    with torch.no_grad():
        ours = resolution_aware_downsample(conv, x)
        reference = F.conv2d(x, conv.weight, conv.bias, stride=4, padding=2, dilation=2)
    assert ours.shape == reference.shape
    assert ours.shape[-2:] == (math.ceil(height / 4), math.ceil(width / 4))
    if min(height, width) >= 6:
        assert torch.equal(ours, reference)
    else:  # maps of 1-5 px: torch's CPU conv picks another summation order for one of the two
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", range(1, 40))
def test_rad_size_is_ceil_quarter(size):
    assert rad_size(size) == math.ceil(size / 4)


@pytest.mark.parametrize("mode", UPSCALE_METHODS)
@pytest.mark.parametrize(("height", "width"), [(37, 53), (125, 187), (7, 3)])
def test_upscale_hits_the_exact_target(mode, height, width):
    x = torch.randn(1, 4, rad_size(height), rad_size(width))
    assert upscale(x, height, width, mode, host=fake_host).shape[-2:] == (height, width)


@pytest.mark.parametrize("first", ["nearest-exact", "bislerp", "area"])
def test_two_stage_goes_through_half_the_target(first, monkeypatch):
    seen = []

    def spy(x, height, width, mode):
        seen.append((height, width))
        return fake_host(x, height, width, mode)

    x = torch.randn(1, 4, 32, 47)
    out = upscale(x, 125, 187, "bislerp", two_stage_mode=first, host=spy)
    assert out.shape[-2:] == (125, 187)
    assert seen[-1] == (125, 187)
    assert halfway_size(32, 125) == 63 and halfway_size(47, 187) == 94
    if first == "bislerp":
        assert seen[0] == (63, 94)


def test_two_stage_first_stage_never_shrinks():
    assert halfway_size(40, 60) == 40


def test_two_stage_differs_from_one_stage():
    x = torch.randn(1, 4, 10, 14, generator=torch.Generator().manual_seed(3))
    one = upscale(x, 37, 53, "bicubic")
    two = upscale(x, 37, 53, "bicubic", two_stage_mode="nearest-exact")
    assert one.shape == two.shape and not torch.equal(one, two)


def test_resize_is_identity_at_the_target_size():
    x = torch.randn(1, 4, 9, 13)
    assert resize(x, 9, 13, "bicubic") is x


def test_bislerp_needs_the_host():
    with pytest.raises(ResizeError, match="bislerp"):
        resize(torch.randn(1, 4, 4, 4), 8, 8, "bislerp")
    with pytest.raises(ResizeError, match="lanczos"):
        resize(torch.randn(1, 4, 4, 4), 8, 8, "lanczos")


def test_methods_torch_lacks_go_to_the_host_and_torch_methods_never_do():
    asked = []

    def host(x, height, width, mode):
        asked.append(mode)
        return torch.zeros(*x.shape[:2], height, width)

    x = torch.randn(1, 4, 4, 4)
    assert torch.equal(resize(x, 8, 8, "hslerp", host), torch.zeros(1, 4, 8, 8))
    assert torch.equal(resize(x, 8, 8, "bicubic", host), F.interpolate(x, size=(8, 8), mode="bicubic"))
    assert asked == ["hslerp"]


@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_avg_pool2d_is_the_official_ceil_pooling(height, width, factor):
    x = torch.randn(1, 4, height, width)
    out = ca_downscale(x, factor, factor, "avg_pool2d")
    assert out.shape[-2:] == (math.ceil(height / factor), math.ceil(width / factor))
    if height >= factor and width >= factor:
        official = F.avg_pool2d(x, kernel_size=(factor, factor), ceil_mode=True)
        assert torch.equal(out, official)


@pytest.mark.parametrize("mode", CA_DOWNSCALE_METHODS)
@pytest.mark.parametrize(("height", "width"), [(37, 53), (19, 27), (1, 3)])
def test_every_downscale_mode_gives_ceil_sizes(mode, height, width):
    x = torch.randn(1, 4, height, width)
    out = ca_downscale(x, 2.0, 3.0, mode, host=fake_host)
    assert out.shape[-2:] == (math.ceil(height / 2), math.ceil(width / 3))


def test_fractional_factor_with_avg_pool2d_falls_back_to_adaptive_pooling():
    x = torch.randn(1, 4, 37, 53)
    out = ca_downscale(x, 1.5, 1.5, "avg_pool2d")
    assert torch.equal(out, F.adaptive_avg_pool2d(x, (25, 36)))


def test_factor_one_is_the_identity():
    x = torch.randn(1, 4, 37, 53)
    assert ca_downscale(x, 1.0, 1.0, "avg_pool2d") is x


@pytest.mark.parametrize(
    ("size", "factor", "expected"),
    [(100, 2, 50), (125, 2, 63), (1, 2, 1), (10, 1 / 0.3, 3), (9, 1.5, 6), (7, 1000, 1)],
)
def test_downscaled_size_rounds_up_and_never_below_one(size, factor, expected):
    assert downscaled_size(size, factor) == expected


def test_fadeout_matches_the_seed():
    # No fade before the fade start, linear to 0 at the end, floored by the cap.
    assert fadeout_strength(0.1, 0.2, 0.4) == 1.0
    assert fadeout_strength(0.2, 0.2, 0.4) == 1.0
    assert fadeout_strength(0.3, 0.2, 0.4) == pytest.approx(0.5)
    assert fadeout_strength(0.4, 0.2, 0.4) == pytest.approx(0.0)
    assert fadeout_strength(0.35, 0.2, 0.4, cap=0.4) == pytest.approx(0.4)
    assert fadeout_strength(0.25, 0.2, 0.4, cap=0.4) == pytest.approx(0.75)
    assert fadeout_strength(0.3, None, 0.4) == 1.0
    assert fadeout_strength(0.4, 0.4, 0.4) == 1.0  # fade start at the end: no fade, no division by zero
    assert faded_factor(2.0, 1.0) == 2.0
    assert faded_factor(2.0, 0.5) == 1.5
    assert faded_factor(3.0, 0.0) == 1.0


def test_sigma_to_percent_inverts_a_models_conversion():
    def percent_to_sigma(p: float) -> float:
        if p <= 0:
            return 999999999.9
        if p >= 1:
            return 0.0
        return 14.6 * (1 - p) ** 3

    for p in (0.01, 0.25, 0.5, 0.9, 0.999):
        assert sigma_to_percent(percent_to_sigma(p), percent_to_sigma) == pytest.approx(p, abs=1e-9)


def sd15_like_map() -> UNetMap:
    downs = {3, 6, 9}
    ups = {2, 5, 8}
    inputs = tuple(BlockInfo("input", i, 0, downsample=i in downs) for i in range(12))
    outputs = tuple(BlockInfo("output", i, 0, upsample=i in ups) for i in range(12))
    return UNetMap(inputs, (), outputs, 4, family=Family.SD15)


def test_pairs_follow_the_structure():
    unet = sd15_like_map()
    assert unet.downsample_pairs() == {3: 8, 6: 5, 9: 2}
    assert unet.pool_pairs()[4] == 8 and unet.pool_pairs()[1] == 11
    assert unet.after_skip_pairs() == {k: 11 - k for k in range(12)}


def test_simple_presets_are_the_seeds():
    sd15 = {res: RAUNET_PRESETS[(Family.SD15, res)] for res in ("low", "high", "ultra")}
    sdxl = {res: RAUNET_PRESETS[(Family.SDXL, res)] for res in ("low", "high", "ultra")}
    for preset in sd15.values():
        assert (preset.input_blocks, preset.output_blocks, preset.ca_input_blocks, preset.ca_output_blocks) == (
            (3,),
            (8,),
            (1,),
            (11,),
        )
    for preset in sdxl.values():
        assert (preset.input_blocks, preset.output_blocks, preset.ca_input_blocks, preset.ca_output_blocks) == (
            (3,),
            (5,),
            (4,),
            (5,),
        )
    times = lambda p: (p.start_percent, p.end_percent, p.ca_start_percent, p.ca_end_percent)  # noqa: E731
    assert times(sd15["low"]) == (0.0, 0.4, 1.0, 1.0)
    assert times(sd15["high"]) == (0.0, 0.5, 0.0, 0.35)
    assert times(sd15["ultra"]) == (0.0, 0.6, 0.0, 0.45)
    assert times(sdxl["low"]) == (1.0, 1.0, 1.0, 1.0)
    assert times(sdxl["high"]) == (1.0, 1.0, 0.0, 0.5)
    assert times(sdxl["ultra"]) == (0.0, 0.45, 0.0, 0.6)
    for preset in (*sd15.values(), *sdxl.values()):
        assert (preset.ca_downscale_mode, preset.ca_downscale_factor, preset.upscale_mode) == (
            "avg_pool2d",
            2.0,
            "bicubic",
        )
    assert sd15["high"].describe() == (
        "upscale bicubic, in/out blocks [3 / 8], start/end percent 0.0/0.5  |  CA upscale bicubic, "
        "CA in/out blocks [1 / 11], CA start/end percent 0.0/0.35"
    )
