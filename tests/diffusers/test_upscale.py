# ruff: noqa: E402 (diffusers is imported after the skip)
"""``upscale(pipe, reference, scale)``: the guided hires fix in one diffusers call. Its result
keeps the reference's low band, a text-to-image pipeline runs as its image-to-image sibling,
an image reference is its VAE encoding, the pipeline and every input are left as they were,
and bad calls are refused before any UNet call."""

from __future__ import annotations

import pytest
import snapshot

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from torch.nn import functional

from hidiff.core.settings import GuideSettings
from hidiff.diffusers import apply_hidiffusion, upscale
from hidiff.diffusers.install import ATTRIBUTE

NATIVE_PX = 32
"""The tiny pipelines' native image side (16 latent px: their VAE halves the side)."""
STEPS = 4
SCALE = 3
NO_VIEWS = GuideSettings(views=0.0)
"""The large call alone (no native views): where the user's HiDiffusion options show."""


def pipeline_and_prompt(helpers, family):
    if family == "sd":
        return helpers.sd_pipeline(), helpers.sd_prompt()
    return helpers.sdxl_pipeline(), helpers.sdxl_prompt()


def native_latents(helpers, pipe, prompt) -> torch.Tensor:
    return helpers.run(pipe, prompt, STEPS, size=NATIVE_PX, seed=5)


def upscaled(pipe, reference, prompt, seed=7, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = upscale(
            pipe, reference, SCALE, **prompt, num_inference_steps=STEPS, guidance_scale=1.0, generator=generator,
            output_type="latent", **kwargs,
        )  # fmt: skip
    return out.images


def low(x: torch.Tensor, band: tuple[int, int]) -> torch.Tensor:
    return functional.interpolate(functional.interpolate(x, size=band, mode="area"), size=x.shape[-2:], mode="bicubic")


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_the_result_keeps_the_reference_low_band(helpers, family):
    """With the lock at full weight to the end (exponent 0) the result's low band is the
    upscaled reference's; with the lock off (strength 0) it is far from it."""
    pipe, prompt = pipeline_and_prompt(helpers, family)
    reference = native_latents(helpers, pipe, prompt)
    band = tuple(reference.shape[-2:])
    target = low(functional.interpolate(reference, scale_factor=SCALE, mode="bicubic"), band)
    locked = upscaled(pipe, reference, prompt, guide=GuideSettings(exponent=0.0))
    free = upscaled(pipe, reference, prompt, guide=GuideSettings(strength=0.0))
    assert locked.shape[-2:] == (band[0] * SCALE, band[1] * SCALE)
    locked_error = (low(locked, band) - target).abs().mean().item()
    free_error = (low(free, band) - target).abs().mean().item()
    assert locked_error < 0.1 * free_error, (locked_error, free_error)


def test_a_text_to_image_pipeline_runs_as_the_node_and_a_ksampler_would(helpers):
    """What upscale does, written out: HiDiffusion on the node's (measured) schedule with the
    lock against the reference, and an image-to-image run of the same components from the
    bicubic-upscaled reference at strength 1; far from the same run without the lock."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from hidiff.diffusers import remove_hidiffusion

    pipe, prompt = pipeline_and_prompt(helpers, "sd")
    reference = native_latents(helpers, pipe, prompt)
    image_pipe = StableDiffusionImg2ImgPipeline(**pipe.components)
    start = functional.interpolate(reference, scale_factor=SCALE, mode="bicubic")

    def written_out(**options):
        apply_hidiffusion(pipe, **options)
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            out = image_pipe(
                image=start, strength=1.0, **prompt, num_inference_steps=STEPS, guidance_scale=1.0,
                generator=generator, output_type="latent",
            )  # fmt: skip
        remove_hidiffusion(pipe)
        return out.images

    result = upscaled(pipe, reference, prompt)
    torch.testing.assert_close(result, written_out(reference=reference, schedule="measured"), rtol=0, atol=0)
    assert (result - written_out(schedule="measured")).abs().mean() > 0.05
    # the large call (skipped under the views at their default share) runs the node's schedule, not the official
    large_call = upscaled(pipe, reference, prompt, guide=NO_VIEWS)
    torch.testing.assert_close(large_call, written_out(reference=reference, schedule="measured", guide=NO_VIEWS))
    assert (large_call - written_out(reference=reference, guide=NO_VIEWS)).abs().mean() > 0.01


def test_an_image_reference_is_its_vae_encoding(helpers):
    pipe, prompt = pipeline_and_prompt(helpers, "sd")
    torch.manual_seed(4)
    image = torch.rand(1, 3, NATIVE_PX, NATIVE_PX)
    with torch.no_grad():
        encoded = pipe.vae.encode(2.0 * image - 1.0).latent_dist.mode() * pipe.vae.config.scaling_factor
    from_image = upscaled(pipe, image, prompt)
    torch.testing.assert_close(from_image, upscaled(pipe, encoded, prompt), rtol=0, atol=0)
    assert (from_image - upscaled(pipe, 2.0 * encoded, prompt)).abs().max() > 0.1


def test_the_pipeline_the_reference_and_the_rng_are_left_as_they_were(helpers):
    """Without HiDiffusion before: none after, and sampling is bit-identical; the same seed
    gives the same result. With it (its own options, which the guided run takes): the same
    installation is back and samples as before, also after a call that failed."""
    pipe, prompt = pipeline_and_prompt(helpers, "sdxl")
    reference = native_latents(helpers, pipe, prompt)
    kept = reference.clone()
    large = helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE)
    before = snapshot.of_module(pipe.unet)
    first = upscaled(pipe, reference, prompt, guide=NO_VIEWS)
    assert snapshot.rng_state() == before.rng
    assert torch.equal(reference, kept)
    assert not hasattr(pipe.unet, ATTRIBUTE)
    assert before.differences(snapshot.of_module(pipe.unet, rng=False)) == []
    torch.testing.assert_close(helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE), large, rtol=0, atol=0)
    torch.testing.assert_close(upscaled(pipe, reference, prompt, guide=NO_VIEWS), first, rtol=0, atol=0)

    apply_hidiffusion(pipe, window_seed=3)
    installation = getattr(pipe.unet, ATTRIBUTE)
    applied = helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE)
    assert not torch.equal(applied, large)
    second = upscaled(pipe, reference, prompt, guide=NO_VIEWS)
    assert getattr(pipe.unet, ATTRIBUTE) is installation
    torch.testing.assert_close(helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE), applied, rtol=0, atol=0)
    assert not torch.equal(second, first)  # the guided run took the user's options (window_seed)
    with pytest.raises(ValueError, match="steps"):  # the pipeline's own check fails, after the swap
        upscale(pipe, reference, SCALE, **prompt, num_inference_steps=0, output_type="latent")
    assert getattr(pipe.unet, ATTRIBUTE) is installation
    torch.testing.assert_close(helpers.run(pipe, prompt, STEPS, size=NATIVE_PX * SCALE), applied, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ({"scale": 1.0}, "scale"),
        ({"scale": True}, "scale"),
        ({"strength": 0.0}, "strength"),
        ({"height": 96}, "height"),
        ({"reference": torch.zeros(1, 5, 16, 16)}, "reference"),
        ({"reference": torch.zeros(4, 16, 16)}, "reference"),
    ],
)
def test_bad_calls_are_refused_before_any_unet_call(helpers, call, named):
    pipe, prompt = pipeline_and_prompt(helpers, "sd")
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    arguments = {"reference": torch.zeros(1, 4, 16, 16), "scale": SCALE, **call}
    with pytest.raises(ValueError, match=named):
        upscale(pipe, arguments.pop("reference"), arguments.pop("scale"), **prompt, **arguments)
    handle.remove()
    assert calls == []


def test_a_bare_unet_or_an_inpainting_pipeline_is_refused(helpers):
    from diffusers import StableDiffusionInpaintPipeline

    pipe, _ = pipeline_and_prompt(helpers, "sd")
    with pytest.raises(ValueError, match="bare UNet"):
        upscale(pipe.unet, torch.zeros(1, 4, 16, 16), SCALE)
    with pytest.raises(ValueError, match="inpainting"):
        upscale(StableDiffusionInpaintPipeline(**pipe.components), torch.zeros(1, 4, 16, 16), SCALE)
