"""The guided hires fix's low-band lock (hidiff.core.guide), against the formulas written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)

from hidiff.core.guide import LOWPASS_MODES, lock_low_band, lock_weight, locked_band, low_band
from hidiff.core.settings import GuideSettings


def demofusion_weight(level: float, strength: float, exponent: float) -> float:
    return strength * (0.5 * (1 + math.cos(math.pi * (1 - level)))) ** exponent


@pytest.mark.parametrize("level", [0.0, 0.1, 0.35, 0.5, 0.8, 1.0])
@pytest.mark.parametrize(("strength", "exponent"), [(1.0, 3.0), (0.6, 2.0), (1.0, 0.0)])
def test_the_weight_is_demofusions_cosine(level, strength, exponent):
    settings = GuideSettings(strength=strength, exponent=exponent)
    assert lock_weight(level, settings) == pytest.approx(demofusion_weight(level, strength, exponent), abs=1e-12)


def test_the_weight_is_full_at_pure_noise_and_off_at_the_end():
    settings = GuideSettings()
    assert lock_weight(1.0, settings) == 1.0 and lock_weight(0.0, settings) == 0.0
    levels = [i / 20 for i in range(21)]
    weights = [lock_weight(level, settings) for level in levels]
    assert weights == sorted(weights)


def resize_low(x: torch.Tensor, band: tuple[int, int]) -> torch.Tensor:
    small = F.adaptive_avg_pool2d(x, band)
    return F.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)


def fft_low(x: torch.Tensor, band: tuple[int, int]) -> torch.Tensor:
    """The box written with the full (complex) FFT, index by index."""
    height, width = x.shape[-2:]
    spectrum = torch.fft.fft2(x.double())
    keep = torch.zeros(height, width, dtype=torch.bool)
    for i in range(height):
        for j in range(width):
            fy, fx = min(i, height - i), min(j, width - j)
            keep[i, j] = fy <= band[0] / 2 and fx <= band[1] / 2
    return torch.fft.ifft2(spectrum * keep).real.float()


@pytest.mark.parametrize(
    ("shape", "band"), [((2, 4, 48, 48), (16, 16)), ((1, 4, 36, 60), (12, 20)), ((1, 4, 50, 33), (20, 13))]
)
def test_each_low_pass_equals_its_formula(shape, band):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(low_band(x, band, "resize"), resize_low(x, band), atol=1e-5, rtol=0)
    torch.testing.assert_close(low_band(x, band, "fft"), fft_low(x, band), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", LOWPASS_MODES)
def test_the_lock_equals_the_formula_against_a_decisive_reference(mode):
    generator = torch.Generator().manual_seed(3)
    denoised = torch.randn(2, 4, 48, 48, generator=generator)
    native = torch.randn(1, 4, 16, 16, generator=generator) * 3
    reference = F.interpolate(native, size=(48, 48), mode="bicubic", align_corners=False)
    reference_low = low_band(reference, (16, 16), mode)
    low = resize_low if mode == "resize" else fft_low
    weight = 0.7
    expected = denoised + weight * (low(reference, (16, 16)) - low(denoised, (16, 16)))
    locked = lock_low_band(denoised, reference_low, weight, (16, 16), mode)
    torch.testing.assert_close(locked, expected, atol=1e-4, rtol=0)
    assert float((expected - denoised).abs().max()) > 100 * 1e-4, "the reference must be far from no lock"
    if mode == "fft":  # a projection: at weight 1 the low band is the reference's, the rest the prediction's
        full = lock_low_band(denoised, reference_low, 1.0, (16, 16), mode)
        torch.testing.assert_close(low(full, (16, 16)), low(reference, (16, 16)).expand_as(full), atol=1e-4, rtol=0)
        torch.testing.assert_close(full - low(full, (16, 16)), denoised - low(denoised, (16, 16)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", LOWPASS_MODES)
def test_locking_the_cfg_result_equals_locking_cond_and_uncond(mode):
    """The lock is affine with weights that sum to one in CFG: the order does not matter."""
    generator = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(2, 1, 4, 32, 32, generator=generator)
    reference_low = low_band(torch.randn(1, 4, 32, 32, generator=generator), (16, 16), mode)
    scale = 6.0

    def lock(x):
        return lock_low_band(x, reference_low, 0.8, (16, 16), mode)

    after = lock(uncond + scale * (cond - uncond))
    before = lock(uncond) + scale * (lock(cond) - lock(uncond))
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("band", "cutoff", "locked"), [((16, 16), 1.0, (16, 16)), ((16, 24), 0.5, (8, 12)), ((3, 5), 0.1, (1, 1))]
)
def test_the_cutoff_is_a_fraction_of_the_references_band(band, cutoff, locked):
    assert locked_band(band, cutoff) == locked


def test_no_weight_is_no_lock_and_an_unknown_low_pass_is_refused():
    x = torch.randn(1, 4, 24, 24)
    assert lock_low_band(x, torch.zeros_like(x), 0.0, (8, 8), "resize") is x
    with pytest.raises(ValueError, match="valid: resize, fft"):
        low_band(x, (8, 8), "gaussian")
