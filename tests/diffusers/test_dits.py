# ruff: noqa: E402 (diffusers is imported after the skip)
"""``upscale`` on Flux and SD3 pipelines (tiny random FluxTransformer2DModel and
SD3Transformer2DModel): the lock per call against the formula written here with σ (the
scheduler's sigma at the step) as the noise level; the native views (on packed tokens for
Flux); no RAU-Net or MSW-MSA, told once; the pipeline, the reference and the RNG left as
they were; bad input refused before any call."""

from __future__ import annotations

import logging
import math
import types

import pytest
import snapshot

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from torch.nn import functional

from hidiff.core.settings import GuideSettings
from hidiff.diffusers import UnsupportedModelError, apply_hidiffusion, upscale

NATIVE_PX = 32
"""The tiny pipelines' native image side: 16 latent px (their VAE halves the side), 8x8 patches."""
NATIVE = 16
SCALE = 3
STEPS = 3
CHANNELS = 16


FAMILIES = ("flux", "sd3")


def pipeline_and_prompt(helpers, family):
    pipe = helpers.flux_pipeline() if family == "flux" else helpers.sd3_pipeline()
    return pipe, helpers.flux_prompt()  # the tiny SD3's widths are the tiny Flux's


def as_latent(pipe, latents: torch.Tensor, side_px: int) -> torch.Tensor:
    """A pipeline's latents as (batch, channels, h, w): a Flux pipeline's unpacked with its own
    ``_unpack_latents``, an SD3 pipeline's as they are."""
    if latents.ndim == 4:
        return latents
    return pipe._unpack_latents(latents, side_px, side_px, pipe.vae_scale_factor)


def native_latents(helpers, pipe, prompt) -> torch.Tensor:
    return as_latent(pipe, helpers.run(pipe, prompt, STEPS, size=NATIVE_PX, seed=5), NATIVE_PX)


def upscaled(pipe, reference, prompt, seed=7, **kwargs) -> torch.Tensor:
    """``upscale``'s latents, (batch, channels, h, w)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        images = upscale(
            pipe, reference, SCALE, **prompt, num_inference_steps=STEPS, guidance_scale=1.0, generator=generator,
            output_type="latent", **kwargs,
        ).images  # fmt: skip
    return as_latent(pipe, images, NATIVE_PX * SCALE)


def low(x: torch.Tensor) -> torch.Tensor:
    """Area to the native side, bicubic back: the band the lock holds (cutoff 1)."""
    small = functional.interpolate(x, size=(NATIVE, NATIVE), mode="area")
    return functional.interpolate(small, size=x.shape[-2:], mode="bicubic", align_corners=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lock_on_a_dit_follows_the_formula_at_every_call(helpers, family):
    """At every large call the velocity handed to the scheduler is the transformer's own with
    its x0 = x − σ·v moved by g(σ) · (low(upscaled reference) − low(x0)), g = (½(1 + cos π(1 − σ)))³
    and σ the scheduler's sigma at the step (its timestep / 1000); far from no lock."""
    pipe, prompt = pipeline_and_prompt(helpers, family)
    reference = native_latents(helpers, pipe, prompt)
    raw: list[torch.Tensor] = []
    stepped: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    # registered before upscale's hooks, so it sees the transformer's own output
    pipe.transformer.register_forward_hook(lambda _m, _a, out: raw.append(out[0].detach().clone()))
    step = pipe.scheduler.step

    def recording_step(model_output, timestep, sample, **kwargs):
        stepped.append((model_output.detach().clone(), float(timestep) / 1000.0, sample.detach().clone()))
        return step(model_output, timestep, sample, **kwargs)

    pipe.scheduler.step = recording_step
    upscaled(pipe, reference, prompt, guide=GuideSettings(views=0.0))
    assert len(raw) == len(stepped) == STEPS
    side = NATIVE_PX * SCALE
    target = low(functional.interpolate(reference, scale_factor=SCALE, mode="bicubic", align_corners=False))

    def unpack(latents):
        return as_latent(pipe, latents, side)

    gaps = []
    for velocity, (result, sigma, sample) in zip(raw, stepped, strict=True):
        x, v = unpack(sample), unpack(velocity)
        x0 = x - sigma * v
        weight = (0.5 * (1.0 + math.cos(math.pi * (1.0 - sigma)))) ** 3
        expected = (x - (x0 + weight * (target - low(x0)))) / sigma
        torch.testing.assert_close(unpack(result), expected, atol=1e-4, rtol=1e-4)
        gaps.append(float((expected - v).abs().max()))
    assert stepped[0][1] == pytest.approx(1.0)
    assert max(gaps) > 100 * 1e-4, f"the lock must move the velocity far more than the tolerance: {gaps}"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_views_denoise_native_views_and_no_hidiffusion_is_told_once(helpers, caplog, family):
    """The transformer sees only the 9 native-size views of the 3x latent (8x8 patches each),
    never the whole; RAU-Net and MSW-MSA are said not to apply, once; the views change the result."""
    pipe, prompt = pipeline_and_prompt(helpers, family)
    reference = native_latents(helpers, pipe, prompt)
    seen: list[tuple[int, ...]] = []
    embedder = pipe.transformer.x_embedder if family == "flux" else pipe.transformer.pos_embed
    hook = embedder.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    with caplog.at_level(logging.INFO, logger="hidiffusion"):
        with_views = upscaled(pipe, reference, prompt)
    hook.remove()
    view = (SCALE * SCALE, (NATIVE // 2) ** 2, 4 * CHANNELS) if family == "flux" else (9, CHANNELS, NATIVE, NATIVE)
    assert seen and set(seen) == {view}, set(seen)
    told = [r.getMessage() for r in caplog.records if "without RAU-Net and MSW-MSA" in r.getMessage()]
    name = "FluxTransformer2DModel" if family == "flux" else "SD3Transformer2DModel"
    assert len(told) == 1 and f"{name} is not a UNet" in told[0], told
    assert with_views.shape == (1, CHANNELS, NATIVE * SCALE, NATIVE * SCALE)
    assert (with_views - upscaled(pipe, reference, prompt, guide=GuideSettings(views=0.0))).abs().max() > 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_the_result_keeps_the_reference_low_band(helpers, family):
    """With the lock at full weight to the end (exponent 0) the result's low band is the
    upscaled reference's; with the lock off (strength 0) it is far from it."""
    pipe, prompt = pipeline_and_prompt(helpers, family)
    reference = native_latents(helpers, pipe, prompt)
    target = low(functional.interpolate(reference, scale_factor=SCALE, mode="bicubic", align_corners=False))
    locked = upscaled(pipe, reference, prompt, guide=GuideSettings(exponent=0.0))
    free = upscaled(pipe, reference, prompt, guide=GuideSettings(strength=0.0))
    locked_error = (low(locked) - target).abs().mean().item()
    free_error = (low(free) - target).abs().mean().item()
    assert locked_error < 0.1 * free_error, (locked_error, free_error)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_pipeline_the_reference_and_the_rng_are_left_as_they_were(helpers, family):
    """No hook stays on the transformer, sampling after is bit-identical, the reference and the
    RNG are untouched, and the same seed gives the same result; also after a failed call."""
    pipe, prompt = pipeline_and_prompt(helpers, family)
    reference = native_latents(helpers, pipe, prompt)
    kept = reference.clone()
    large = helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE)
    before = snapshot.of_module(pipe.transformer)
    first = upscaled(pipe, reference, prompt)
    assert snapshot.rng_state() == before.rng
    assert torch.equal(reference, kept)
    assert before.differences(snapshot.of_module(pipe.transformer, rng=False)) == []
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks
    torch.testing.assert_close(helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE), large, rtol=0, atol=0)
    torch.testing.assert_close(upscaled(pipe, reference, prompt), first, rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_sequence_length|prompt_embeds"):  # the pipeline's own check, hooks on
        if family == "flux":
            upscale(pipe, reference, SCALE, **prompt, max_sequence_length=1000, output_type="latent")
        else:
            upscale(pipe, reference, SCALE, prompt_embeds=prompt["prompt_embeds"], output_type="latent")
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_reference_is_its_vae_encoding_with_the_shift_factor(helpers, family):
    """An image is encoded as the Flux and SD3 image-to-image pipelines encode one: (mode − shift) · scale."""
    pipe, prompt = pipeline_and_prompt(helpers, family)
    torch.manual_seed(4)
    image = torch.rand(1, 3, NATIVE_PX, NATIVE_PX)
    with torch.no_grad():
        mode = pipe.vae.encode(2.0 * image - 1.0).latent_dist.mode()
    config = pipe.vae.config
    encoded = (mode - config.shift_factor) * config.scaling_factor
    from_image = upscaled(pipe, image, prompt)
    torch.testing.assert_close(from_image, upscaled(pipe, encoded, prompt), rtol=0, atol=0)
    assert (from_image - upscaled(pipe, mode * config.scaling_factor, prompt)).abs().max() > 0.01


def test_bad_input_is_refused_before_any_transformer_call(helpers):
    """Packed latents (what output_type='latent' gives) name the unpacking; latents of other
    channels, a transformer the guided mode does not read, and HiDiffusion itself on a Flux
    pipeline are refused, naming what is valid."""
    pipe, prompt = helpers.flux_pipeline(), helpers.flux_prompt()
    calls: list[int] = []
    pipe.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    packed = torch.zeros(1, (NATIVE // 2) ** 2, 4 * CHANNELS)
    with pytest.raises(ValueError, match=r"packed Flux latents .*_unpack_latents"):
        upscale(pipe, packed, SCALE, **prompt)
    with pytest.raises(ValueError, match=r"reference is a tensor of shape \(1, 4, 16, 16\).*\(batch, 16, h, w\)"):
        upscale(pipe, torch.zeros(1, 4, NATIVE, NATIVE), SCALE, **prompt)
    with pytest.raises(ValueError, match="scale must be a number above 1"):
        upscale(pipe, torch.zeros(1, CHANNELS, NATIVE, NATIVE), 1.0, **prompt)
    other = types.SimpleNamespace(transformer=torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="takes Stable Diffusion, SDXL, SD3 and Flux pipelines; .* Linear"):
        upscale(other, torch.zeros(1, 4, 8, 8), SCALE)
    with pytest.raises(UnsupportedModelError, match=r"not a UNet.*upscale\(\)"):
        apply_hidiffusion(pipe)
    assert calls == []


def test_a_flux_call_that_is_not_one_plain_image_grid_runs_as_it_is_told_once(helpers, caplog):
    """Tokens laid out by other ``img_ids`` (a reference image's, as Kontext appends them) are
    not read: the call's output is the transformer's own, and the run is told once."""
    from hidiff.diffusers.calls import grid_ids
    from hidiff.diffusers.transformer import GuidedTransformer

    pipe, prompt = pipeline_and_prompt(helpers, "flux")
    transformer = pipe.transformer
    tokens = torch.randn(1, 2 * (NATIVE // 2) ** 2, 4 * CHANNELS, generator=torch.Generator().manual_seed(3))
    ids = grid_ids(NATIVE, NATIVE // 2, tokens)  # a 2x taller grid...
    ids[(NATIVE // 2) ** 2 :, 0] = 1  # ...whose second half is another image's
    call = {
        "hidden_states": tokens, "encoder_hidden_states": prompt["prompt_embeds"],
        "pooled_projections": prompt["pooled_prompt_embeds"], "timestep": torch.tensor([0.9]), "img_ids": ids,
        "txt_ids": torch.zeros(prompt["prompt_embeds"].shape[1], 3),
    }  # fmt: skip
    with torch.no_grad():
        own = transformer(**call).sample
        guided = GuidedTransformer(transformer, torch.randn(1, CHANNELS, 4, 4), None, lambda: pipe.scheduler)
        guided.attach()
        with caplog.at_level(logging.INFO, logger="hidiffusion"):
            first, second = transformer(**call).sample, transformer(**call).sample
        guided.detach()
    torch.testing.assert_close(first, own, rtol=0, atol=0)
    torch.testing.assert_close(second, own, rtol=0, atol=0)
    told = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(told) == 1, told
