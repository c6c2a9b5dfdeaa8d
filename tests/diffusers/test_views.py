# ruff: noqa: E402 (diffusers is imported after the skip)
"""Native views in diffusers' guided mode: each large UNet call against the formula written
here (epsilon and v prediction, a share below 1 and the large call skipped at 1, a size that
does not divide), sizes under twice the reference, ControlNet residuals, removal."""

from __future__ import annotations

import logging
import math

import pytest

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from diffusers import DDIMScheduler
from reference import gaussian
from torch.nn import functional

from hidiff.core.settings import GuideSettings
from hidiff.diffusers import apply_hidiffusion, remove_hidiffusion

NATIVE = 16
TIMESTEP = 600
BLUR, DEGRAIN = 2.0, 1.5


def call(pipe, sample: torch.Tensor, **extra) -> torch.Tensor:
    embeds = torch.randn(sample.shape[0], 8, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return pipe.unet(sample, TIMESTEP, encoder_hidden_states=embeds, **extra).sample


def to_x0(output, sample, a, s, prediction_type):
    return (sample - s * output) / a if prediction_type == "epsilon" else a * sample - s * output


def expected(pipe, sample, stride, share, prediction_type):
    """Blur, re-standardise each channel, mirror up to the stride, each view's x0 from the plain UNet at
    the view's own input, put back, each view's smooth offset out, crop, blend with the large
    call's x0, and the output whose x0 that is."""
    alpha_bar = float(pipe.scheduler.alphas_cumprod[TIMESTEP])
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    level = TIMESTEP / 1000
    ramp = 0.5 * (1 + math.cos(math.pi * (1 - level)))
    low = gaussian(sample, stride - 1, BLUR * (0.99 * ramp + 0.01))
    dims = (-2, -1)  # each channel
    blurred = (low - low.mean(dims, keepdim=True)) / low.std(dims, keepdim=True) * sample.std(
        dims, keepdim=True
    ) + sample.mean(dims, keepdim=True)
    height, width = sample.shape[-2:]
    blurred = functional.pad(blurred, (0, -width % stride, 0, -height % stride), mode="reflect")
    placed = torch.zeros_like(blurred)
    for i in range(stride):
        for j in range(stride):
            view = blurred[:, :, i::stride, j::stride]
            placed[:, :, i::stride, j::stride] = to_x0(call(pipe, view), view, a, s, prediction_type)
    residual = placed - gaussian(placed, stride - 1, DEGRAIN * stride / 2)
    offsets = torch.zeros_like(placed)
    for i in range(stride):
        for j in range(stride):
            offsets[:, :, i::stride, j::stride] = gaussian(residual[:, :, i::stride, j::stride], stride - 1, DEGRAIN)
    views_x0 = (placed - offsets)[:, :, :height, :width]
    x0 = (1 - share) * to_x0(call(pipe, sample), sample, a, s, prediction_type) + share * views_x0
    return (sample - a * x0) / s if prediction_type == "epsilon" else (a * sample - x0) / s


def pipeline(helpers, prediction_type="epsilon"):
    pipe = helpers.sd_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return pipe


def views_only(share: float = 1.0) -> GuideSettings:
    """The lock off (strength 0), so each call's output is the views' alone."""
    return GuideSettings(strength=0.0, views=share, views_blur=BLUR, views_degrain=DEGRAIN)


@pytest.mark.parametrize(
    ("prediction_type", "share", "side", "stride"),
    [("epsilon", 1.0, 48, 3), ("v_prediction", 0.6, 48, 3), ("epsilon", 0.5, 52, 3), ("v_prediction", 1.0, 32, 2)],
)
def test_each_large_call_is_the_written_out_blend_of_the_call_and_its_native_views(
    helpers, prediction_type, share, side, stride
):
    pipe = pipeline(helpers, prediction_type)
    sample = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(4))
    plain = call(pipe, sample)
    written = expected(pipe, sample, stride, share, prediction_type)
    reference = torch.randn(1, 4, NATIVE, NATIVE, generator=torch.Generator().manual_seed(11))
    apply_hidiffusion(pipe, apply_raunet=False, apply_window_attn=False, reference=reference, guide=views_only(share))
    result = call(pipe, sample)
    remove_hidiffusion(pipe)
    torch.testing.assert_close(result, written, atol=2e-4, rtol=1e-4)
    assert (written - plain).abs().max() > 100 * 2e-4, "the views must move the call far more than the tolerance"
    assert torch.equal(call(pipe, sample), plain)
    assert not hasattr(pipe.unet, "_diffusers_hook"), "removal leaves no hook registry on the UNet"


def test_under_twice_the_reference_and_with_controlnet_residuals_a_call_runs_without_views_told_once(helpers, caplog):
    pipe = pipeline(helpers)
    reference = torch.randn(1, 4, NATIVE, NATIVE, generator=torch.Generator().manual_seed(11))
    small = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(4))
    large = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(5))
    plain_small = call(pipe, small)
    unet = pipe.unet
    residuals = {
        "down_block_additional_residuals": tuple(
            torch.zeros(1, c, 48 // f, 48 // f)
            for c, f in [(16, 1)] * 3 + [(16, 2)] + [(32, 2)] * 2 + [(32, 4)] * 3 + [(32, 8)] * 3
        ),
        "mid_block_additional_residual": torch.zeros(1, 32, 6, 6),
    }
    plain_large = call(pipe, large, **residuals)
    apply_hidiffusion(pipe, apply_raunet=False, apply_window_attn=False, reference=reference, guide=views_only())
    with caplog.at_level(logging.INFO, logger="hidiffusion"):
        for _ in range(2):
            torch.testing.assert_close(call(pipe, small), plain_small, rtol=0, atol=0)
            torch.testing.assert_close(call(pipe, large, **residuals), plain_large, rtol=0, atol=0)
    remove_hidiffusion(pipe)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("twice the reference's side" in m for m in messages) == 1, messages
    assert sum("ControlNet" in m for m in messages) == 1, messages
    assert unet is pipe.unet
