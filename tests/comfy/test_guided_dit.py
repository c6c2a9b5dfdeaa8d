"""The HiDiffusion Hires Fix on a DiT with a rectified-flow schedule (a tiny random Flux):
the lock alone per call against the formula written here, with the noise level from the
model's own sampling object; the native views on it; what is said once; bad input."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from test_guided_comfy import Recorder, with_post_cfg
from test_msw_msa_comfy import tiny_flux

NATIVE = 16
"""The native latent's side (128 px); Flux cuts it into 2x2 patches."""
CHANNELS = 16


def flux_conditioning(seed: int) -> list:
    """A CONDITIONING list of the tiny Flux's widths: text tokens and the pooled vector."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 12, 32, generator=generator), {"pooled_output": torch.randn(1, 32, generator=generator)}]]


def native_latent(seed: int = 4) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, CHANNELS, NATIVE, NATIVE, generator=generator) * 0.5}


def hires_fix(pack, model, latent, advanced: str = "", scale_by: float = 3.0):
    node = pack["HiDiffusionHiresFix"]
    out = node.execute(model=model, latent=latent, scale_by=scale_by, raunet=True, msw_msa=True, advanced=advanced)
    return out.result[0], out.result[1]


def sample(model, latent, *, steps: int = 3, sampler: str = "euler", seed: int = 3) -> torch.Tensor:
    import comfy.sample

    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed)
    return comfy.sample.sample(
        model, noise, steps, 3.0, sampler, "simple", flux_conditioning(11), flux_conditioning(12), samples,
        denoise=1.0, seed=seed, disable_pbar=True,
    )  # fmt: skip


def flux_level(model, sigma: float) -> float:
    """The noise level (1 − the sampling percent) of a Flux sigma, in closed form: Flux's
    schedule is sigma = e^shift / (e^shift + 1/t − 1) at time t, so t = 1 / (1 + e^shift (1/sigma − 1))."""
    shift = model.get_model_object("model_sampling").shift
    return 1.0 / (1.0 + math.exp(shift) * (1.0 / sigma - 1.0))


def expected_lock(model, denoised, reference, sigma):
    """denoised + g · (low(reference) − low(denoised)); low: area to the native side, bicubic back."""

    def low(x):
        return F.interpolate(F.adaptive_avg_pool2d(x, NATIVE), size=x.shape[-2:], mode="bicubic", align_corners=False)

    weight = (0.5 * (1 + math.cos(math.pi * (1 - flux_level(model, sigma))))) ** 3
    reference = model.model.process_latent_in(reference)
    return denoised + weight * (low(reference) - low(denoised))


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_the_lock_on_a_flux_model_follows_the_formula_at_every_call(pack, sampler):
    """Flux's sigmas are rectified-flow ones (1 at pure noise), not EDM ones: the weight is read
    from the model's own schedule, so the first call is locked in full and later ones less."""
    before, after = Recorder(), Recorder()
    model, latent = hires_fix(pack, with_post_cfg(tiny_flux(), before), native_latent(), advanced="views: 0")
    sample(with_post_cfg(model, after), latent, sampler=sampler)
    assert len(before.calls) == len(after.calls) == 3
    gaps = []
    for (sigma, given), (_, result) in zip(before.calls, after.calls, strict=True):
        expected = expected_lock(model, given, latent["samples"], sigma)
        torch.testing.assert_close(result, expected, atol=2e-3, rtol=1e-5)
        gaps.append(float((expected - given).abs().max()))
    assert before.calls[0][0] == pytest.approx(1.0)
    assert max(gaps) > 100 * 2e-3, f"the lock must move the prediction far more than the tolerance: {gaps}"


def test_flux_gets_the_lock_and_the_views_without_hidiffusion_and_is_told_once(pack, logs):
    """The node hands a Flux model back with the lock and the views only (no UNet patch can
    apply), says so once, and the large latent is denoised as native-size views: the model
    sees 9 views of the native side and never the whole 3x latent."""
    flux = tiny_flux()
    shapes: list[tuple[int, ...]] = []
    hook = flux.model.diffusion_model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        model, latent = hires_fix(pack, flux, native_latent())
        assert latent["samples"].shape == (1, CHANNELS, 3 * NATIVE, 3 * NATIVE)
        assert [type(f).__name__ for f in model.model_options["sampler_post_cfg_function"]] == ["LowBandLock"]
        assert not model.model_options["transformer_options"].get("patches_replace")
        with_views = sample(model, latent, steps=2)
    finally:
        hook.remove()
    assert shapes and set(shapes) == {(18, CHANNELS, NATIVE, NATIVE)}, set(shapes)  # cond + uncond, 9 views each
    told = [m for m in logs.messages(logging.INFO) if "without RAU-Net and MSW-MSA" in m]
    assert len(told) == 1 and "is not a UNet" in told[0], told
    large_only, _ = hires_fix(pack, tiny_flux(), native_latent(), advanced="views: 0")
    assert (with_views - sample(large_only, latent, steps=2)).abs().max() > 0.05


def test_flux_input_is_checked_against_its_own_latent_format(pack):
    """A latent of another model, a video latent and a video model are refused before any
    sampling, naming the input and what it should be."""
    import comfy.latent_formats

    with pytest.raises(ValueError, match=r"latent: 4 channels; this model's latents \(Flux\) have 16"):
        hires_fix(pack, tiny_flux(), {"samples": torch.zeros(1, 4, NATIVE, NATIVE)})
    with pytest.raises(ValueError, match="latent: a 4-D latent"):
        hires_fix(pack, tiny_flux(), {"samples": torch.zeros(1, CHANNELS, 3, NATIVE, NATIVE)})
    video = tiny_flux()
    video.add_object_patch("latent_format", comfy.latent_formats.Wan21())
    with pytest.raises(ValueError, match="model: Wan21 takes 3-D latents"):
        hires_fix(pack, video, native_latent())
