# ruff: noqa: E402 (diffusers is imported after the skip)
"""ControlNet pipelines (SD1.5 and SDXL) under RAU-Net, and peft LoRA before and after apply."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from diffusers import (
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
)

from hidiff.diffusers import apply_hidiffusion, remove_hidiffusion
from hidiff.diffusers.install import ATTRIBUTE

peft = pytest.importorskip("peft", reason="peft is not installed: pip install -e '.[diffusers]'")


def controlnet_pipeline(helpers, family: str):
    if family == "sd":
        unet = helpers.sd_unet()
        return helpers.sd_pipeline(
            StableDiffusionControlNetPipeline, unet=unet, controlnet=helpers.tiny_controlnet(unet)
        ), helpers.sd_prompt()
    unet = helpers.sdxl_unet()
    return helpers.sdxl_pipeline(
        StableDiffusionXLControlNetPipeline, unet=unet, controlnet=helpers.tiny_controlnet(unet)
    ), helpers.sdxl_prompt()


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_controlnet_residuals_under_raunet(helpers, family):
    """The residuals reach the UNet at the RAU-Net sizes: a zero conditioning scale gives
    exactly the plain pipeline's result, a real one changes it; removal restores stock."""
    pipe, prompt = controlnet_pipeline(helpers, family)
    control = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    stock = helpers.run(pipe, prompt, 6, image=control)
    apply_hidiffusion(pipe)
    assert getattr(pipe.unet, ATTRIBUTE).text_to_image_controlnet
    zero = helpers.run(pipe, prompt, 6, image=control, controlnet_conditioning_scale=0.0)
    full = helpers.run(pipe, prompt, 6, image=control)
    assert torch.isfinite(full).all() and not torch.equal(full, zero)
    plain = (helpers.sd_pipeline if family == "sd" else helpers.sdxl_pipeline)(unet=pipe.unet)
    apply_hidiffusion(plain, text_to_image_controlnet=True)  # the same UNet and schedule, no ControlNet
    assert torch.equal(zero, helpers.run(plain, prompt, 6))
    remove_hidiffusion(plain)
    assert torch.equal(helpers.run(pipe, prompt, 6, image=control), stock)


def test_sdxl_controlnet_img2img_is_not_text_to_image(helpers):
    unet = helpers.sdxl_unet()
    pipe = helpers.sdxl_pipeline(
        StableDiffusionXLControlNetImg2ImgPipeline, unet=unet, controlnet=helpers.tiny_controlnet(unet)
    )
    apply_hidiffusion(pipe)
    assert not getattr(pipe.unet, ATTRIBUTE).text_to_image_controlnet
    generator = torch.Generator().manual_seed(5)
    image, control = torch.rand(1, 3, 64, 64, generator=generator), torch.rand(1, 3, 64, 64, generator=generator)
    latents = helpers.run(pipe, helpers.sdxl_prompt(), 10, image=image, control_image=control, strength=0.7)
    assert torch.isfinite(latents).all()


def add_lora(unet) -> None:
    """A random (non-zero) LoRA on attention projections and on the resampler convs,
    including the Downsample conv that RAD runs."""
    torch.manual_seed(11)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv"],
    )
    unet.add_adapter(config)


def test_lora_before_and_after_apply(helpers):
    prompt = helpers.sd_prompt()
    before = helpers.sd_pipeline()
    add_lora(before.unet)
    assert isinstance(before.unet.down_blocks[0].downsamplers[0].conv, peft.tuners.lora.LoraLayer)
    lora_stock = helpers.run(before, prompt, 5)
    apply_hidiffusion(before)
    lora_then_apply = helpers.run(before, prompt, 5)
    remove_hidiffusion(before)
    assert torch.equal(helpers.run(before, prompt, 5), lora_stock)

    after = helpers.sd_pipeline()
    apply_hidiffusion(after)
    no_lora = helpers.run(after, prompt, 5)
    add_lora(after.unet)
    apply_then_lora = helpers.run(after, prompt, 5)
    torch.testing.assert_close(apply_then_lora, lora_then_apply, rtol=0, atol=0)
    assert not torch.equal(apply_then_lora, no_lora)
    remove_hidiffusion(after)
    torch.testing.assert_close(helpers.run(after, prompt, 5), lora_stock, rtol=0, atol=0)
