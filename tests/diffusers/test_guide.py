# ruff: noqa: E402 (diffusers is imported after the skip)
"""The guided mode in diffusers: each UNet call's x0 locked by the formula, for epsilon and
v prediction; classifier-free guidance commutes with the lock; native-size calls, removal
and bad references."""

from __future__ import annotations

import math

import pytest
import snapshot

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from diffusers import DDIMScheduler
from torch.nn import functional

from hidiff.core.settings import GuideSettings
from hidiff.diffusers import apply_hidiffusion, remove_hidiffusion

NATIVE = 16
"""The tiny UNets' native latent side (``sample_size``)."""
SIDE = 48
"""3x the native side."""
TIMESTEP = 700


def reference_latents() -> torch.Tensor:
    torch.manual_seed(11)
    return 2.0 * torch.randn(1, 4, NATIVE, NATIVE)


DEFAULTS = GuideSettings(views=0.0)
"""The ComfyUI node's lock defaults, which the diffusers mode takes when no guide is given,
with the native views off: these tests read the lock alone (tests/diffusers/test_views.py
has the views)."""


def expected_lock(output, sample, reference, alpha_bar, prediction_type, timestep, settings=DEFAULTS):
    """The lock written out: x0 from the output, its low band (area to the reference's size,
    bicubic back) moved by g towards the bicubic-upscaled reference's, and back."""
    a, s = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x0 = (sample - s * output) / a if prediction_type == "epsilon" else a * sample - s * output
    height, width = sample.shape[-2:]

    def low(x):
        small = functional.interpolate(x, size=reference.shape[-2:], mode="area")
        return functional.interpolate(small, size=(height, width), mode="bicubic", align_corners=False)

    upscaled = functional.interpolate(reference, size=(height, width), mode="bicubic", align_corners=False)
    g = settings.strength * (0.5 * (1 + math.cos(math.pi * (1 - timestep / 1000)))) ** settings.exponent
    change = g * (low(upscaled).expand_as(x0) - low(x0))
    if prediction_type == "epsilon":
        return output - (a / s) * change
    return output - change / s


def unet_call(pipe, helpers, family, sample, batch_embeds=None):
    embeds = batch_embeds if batch_embeds is not None else helpers.sd_prompt(sample.shape[0])["prompt_embeds"]
    extra = {"added_cond_kwargs": helpers.sdxl_added_cond(sample.shape[0])} if family == "sdxl" else {}
    with torch.no_grad():
        return pipe.unet(sample, TIMESTEP, encoder_hidden_states=embeds, **extra).sample


def pipeline(helpers, family, prediction_type="epsilon"):
    pipe = helpers.sd_pipeline() if family == "sd" else helpers.sdxl_pipeline()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    return pipe


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_each_call_is_locked_by_the_formula(helpers, family, prediction_type):
    pipe = pipeline(helpers, family, prediction_type)
    torch.manual_seed(4)
    sample = torch.randn(1, 4, SIDE, SIDE)
    plain = unet_call(pipe, helpers, family, sample)
    reference = reference_latents()
    apply_hidiffusion(pipe, apply_raunet=False, apply_window_attn=False, reference=reference, guide=DEFAULTS)
    locked = unet_call(pipe, helpers, family, sample)
    alpha_bar = float(pipe.scheduler.alphas_cumprod[TIMESTEP])
    expected = expected_lock(plain, sample, reference, alpha_bar, prediction_type, TIMESTEP)
    assert (locked - plain).abs().max() > 0.5  # the reference is far from the unlocked prediction
    torch.testing.assert_close(locked, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(reference, reference_latents())  # the reference is never changed


def test_guidance_after_the_lock_equals_the_lock_after_guidance(helpers):
    """The lock is affine in x0 with weights summing to one: locking the unconditional and
    conditional predictions and then guiding gives the guided prediction, locked."""
    pipe = pipeline(helpers, "sd")
    torch.manual_seed(5)
    sample = torch.randn(1, 4, SIDE, SIDE).repeat(2, 1, 1, 1)
    embeds = torch.randn(2, 8, 32)
    plain = unet_call(pipe, helpers, "sd", sample, embeds)
    reference = reference_latents()
    apply_hidiffusion(pipe, apply_raunet=False, apply_window_attn=False, reference=reference, guide=DEFAULTS)
    locked = unet_call(pipe, helpers, "sd", sample, embeds)
    scale = 7.5
    guided_then_locked = expected_lock(
        plain[:1] + scale * (plain[1:] - plain[:1]),
        sample[:1],
        reference,
        float(pipe.scheduler.alphas_cumprod[TIMESTEP]),
        "epsilon",
        TIMESTEP,
    )
    locked_then_guided = locked[:1] + scale * (locked[1:] - locked[:1])
    assert (guided_then_locked - (plain[:1] + scale * (plain[1:] - plain[:1]))).abs().max() > 0.5
    torch.testing.assert_close(locked_then_guided, guided_then_locked, atol=1e-3, rtol=1e-3)


def test_a_call_no_larger_than_the_reference_is_not_locked(helpers):
    pipe = pipeline(helpers, "sd")
    torch.manual_seed(6)
    sample = torch.randn(1, 4, NATIVE, NATIVE)
    plain = unet_call(pipe, helpers, "sd", sample)
    apply_hidiffusion(pipe, apply_raunet=False, apply_window_attn=False, reference=reference_latents())
    assert torch.equal(unet_call(pipe, helpers, "sd", sample), plain)


def test_a_guided_run_is_deterministic_and_remove_leaves_the_pipeline_as_before(helpers):
    pipe = helpers.sd_pipeline()
    prompt = helpers.sd_prompt()
    size = 2 * SIDE  # image pixels: the tiny VAE halves them
    baseline = helpers.run(pipe, prompt, 4, size=size)
    apply_hidiffusion(pipe, reference=reference_latents())
    guided = helpers.run(pipe, prompt, 4, size=size)
    again = helpers.run(pipe, prompt, 4, size=size)
    apply_hidiffusion(pipe)
    hidiffusion_alone = helpers.run(pipe, prompt, 4, size=size)
    remove_hidiffusion(pipe)
    assert torch.equal(guided, again)
    assert (guided - hidiffusion_alone).abs().max() > 0.1
    assert torch.equal(helpers.run(pipe, prompt, 4, size=size), baseline)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in pipe.unet.modules())


def test_a_guided_run_leaves_the_whole_unet_and_every_generator_as_it_was(helpers):
    """The whole-state snapshot of the removal tests (tests/snapshot.py), with the lock on."""
    pipe = helpers.sd_pipeline()
    prompt = helpers.sd_prompt()
    reference = reference_latents()  # seeds torch: made before the snapshot
    torch.manual_seed(5)
    before = snapshot.of_module(pipe.unet)
    apply_hidiffusion(pipe, reference=reference)
    assert snapshot.rng_state() == before.rng
    helpers.run(pipe, prompt, 3, size=2 * SIDE)
    remove_hidiffusion(pipe)
    assert before.differences(snapshot.of_module(pipe.unet, rng=False)) == []


def test_bad_references_are_refused_with_the_input_named(helpers):
    pipe = pipeline(helpers, "sd")
    with pytest.raises(ValueError, match="reference has 3 channels; this UNet's latents have 4"):
        apply_hidiffusion(pipe, reference=torch.zeros(1, 3, NATIVE, NATIVE))
    with pytest.raises(ValueError, match=r"reference must be the native-size latents as a \(batch, 4"):
        apply_hidiffusion(pipe, reference=torch.zeros(4, NATIVE, NATIVE))
    with pytest.raises(TypeError, match="guide must be a hidiff.core.settings.GuideSettings"):
        apply_hidiffusion(pipe, reference=reference_latents(), guide={"strength": 1})
    with pytest.raises(ValueError, match="the guided mode on a bare UNet needs scheduler="):
        apply_hidiffusion(pipe.unet, apply_raunet=False, apply_window_attn=False, reference=reference_latents())
    apply_hidiffusion(pipe, apply_raunet=False, apply_window_attn=False, reference=reference_latents())
    with pytest.raises(ValueError, match="reference is 16x16 latent px but the pipeline samples 72x48"):
        unet_call(pipe, helpers, "sd", torch.zeros(1, 4, SIDE, 72))
