"""``upscale(pipe, reference, scale)``: the guided hires fix in one diffusers call.

What the HiDiffusion Hires Fix node and a KSampler do in ComfyUI: the native-size latents
(a pipeline's ``output_type="latent"`` result, or an image encoded with the pipeline's VAE)
are bicubic-upscaled ``scale`` times (:func:`hidiff.core.guide.upscaled_size`, as Upscale
Latent By rounds), and an image-to-image run of the same components at strength 1 samples
the upscaled latents with HiDiffusion, the native views and the low-band lock against the
native latents (``apply_hidiffusion(..., reference=...)``), on the node's defaults: the lock's
and the views' (:class:`~hidiff.core.settings.GuideSettings`) and the auto node's measured
schedule. The
pipeline is left as it was: HiDiffusion applied before the call keeps its own options for the
run and is put back as it was, and a pipeline without it has none after.

A Flux or SD3 pipeline is upscaled as the node upscales a non-UNet: the native views and the
lock on its transformer (:mod:`hidiff.diffusers.transformer`), without RAU-Net and MSW-MSA,
and the size rounded to whole patches.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch

from ..core.guide import upscale_reference, upscaled_size
from ..core.measured import SCHEDULE_NAMES
from ..core.settings import GuideSettings
from .install import ATTRIBUTE
from .structure import unwrap_unet
from .transformer import GuidedTransformer, is_guided_transformer, latent_channels, patch_side


def upscale(
    pipe: Any,
    reference: Any,
    scale: float = 3.0,
    *,
    guide: GuideSettings | None = None,
    strength: float = 1.0,
    **call_kwargs: Any,
) -> Any:
    """Upscale native-size latents or an image ``scale`` times with one subject and new detail.

    Args:
        pipe: a Stable Diffusion 1.x/2.x, SDXL, SD3 or Flux text-to-image or image-to-image
            pipeline; a text-to-image one is run as its image-to-image sibling on the same
            components (``AutoPipelineForImage2Image.from_pipe``).
        reference: the native-size latents (``pipe(..., output_type="latent").images``; a
            Flux pipeline's are packed: pass them unpacked, (batch, 16, height / 8, width / 8)),
            or an image (PIL, or a (batch, 3, height, width) tensor in [0, 1]) that the
            pipeline's VAE encodes (its mode, so the same image gives the same latents).
        scale: the side multiple, above 1 (3 or 4 for 3-4x the native side).
        guide: the lock's and the native views' settings; None takes the ComfyUI node's
            defaults (from twice the reference's side, the large latent is denoised as
            native-size views: :mod:`hidiff.diffusers.views`).
        strength: the image-to-image strength; 1 (the node's denoise 1) samples from pure
            noise added to the upscaled latents.
        **call_kwargs: what the pipeline's call takes (prompt or prompt_embeds,
            num_inference_steps, guidance_scale, generator, output_type, ...).

    Returns:
        The image-to-image pipeline's output at the upscaled size.

    Raises:
        ValueError: ``scale`` not above 1, ``strength`` outside (0, 1], a reference that
            is neither latents of the model's channels nor an image, or ``image`` /
            ``height`` / ``width`` in ``call_kwargs`` (the reference sets them), a bare
            model or an inpainting pipeline; all before any model call.
    """
    model = _pipeline_model(pipe)
    _check_call(scale, strength, call_kwargs)
    dit = is_guided_transformer(model)
    latents = reference_latents(pipe, reference, latent_channels(model) if dit else int(model.config.out_channels))
    size = upscaled_size(int(latents.shape[-2]), int(latents.shape[-1]), scale)
    if dit:  # whole patches
        patch = patch_side(model)
        size = (patch * round(size[0] / patch), patch * round(size[1] / patch))
    if size[0] <= latents.shape[-2] or size[1] <= latents.shape[-1]:
        raise ValueError(f"scale = {scale:g} does not enlarge a {tuple(latents.shape[-2:])} latent; use 3 or 4")
    started = upscale_reference(latents.float(), size).to(latents.dtype)
    image_pipe = image_to_image(pipe)
    sample = functools.partial(image_pipe, image=started, strength=strength, **call_kwargs)
    if dit:
        return _upscale_on_transformer(pipe, image_pipe, model, latents, guide, sample, size)
    return _upscale_on_unet(pipe, model, latents, guide, sample)


def _upscale_on_unet(
    pipe: Any, unet: Any, latents: torch.Tensor, guide: GuideSettings | None, sample: Callable[..., Any]
) -> Any:
    """HiDiffusion with the lock and the views for the image-to-image run ``sample``, then the
    pipeline's own HiDiffusion (or none) back."""
    from . import apply_hidiffusion, remove_hidiffusion

    previous = getattr(unet, ATTRIBUTE, None)
    switches, options = _switches_and_options(previous)
    try:
        apply_hidiffusion(pipe, *switches, **{**options, "reference": latents, "guide": guide})
        return sample()
    finally:  # whatever failed, the pipeline's own HiDiffusion (or none) comes back
        remove_hidiffusion(pipe)
        if previous is not None:
            previous.attach()
            setattr(unet, ATTRIBUTE, previous)


def _upscale_on_transformer(
    pipe: Any,
    image_pipe: Any,
    transformer: Any,
    latents: torch.Tensor,
    guide: GuideSettings | None,
    sample: Callable[..., Any],
    size: tuple[int, int],
) -> Any:
    """The lock and the views on the transformer for the image-to-image run ``sample``, removed
    after. The Flux and SD3 image-to-image pipelines read their size from ``height`` and
    ``width`` (a latent ``image`` carries none), so they are the upscaled latent ``size`` in pixels."""
    guided = GuidedTransformer(transformer, latents, guide, lambda: image_pipe.scheduler)
    factor = int(pipe.vae_scale_factor)
    guided.attach()
    try:
        return sample(height=size[0] * factor, width=size[1] * factor)
    finally:
        guided.detach()


def image_to_image(pipe: Any) -> Any:
    """``pipe`` when it takes ``image`` and ``strength``, else its image-to-image sibling on
    the same components (so HiDiffusion's hooks on the shared UNet apply) and progress bar
    settings."""
    parameters = inspect.signature(type(pipe).__call__).parameters
    if "image" in parameters and "strength" in parameters:
        if "mask_image" in parameters:
            raise ValueError(f"upscale does not take an inpainting pipeline ({type(pipe).__name__})")
        return pipe
    from diffusers import AutoPipelineForImage2Image

    sibling = AutoPipelineForImage2Image.from_pipe(pipe)
    sibling.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
    return sibling


def reference_latents(pipe: Any, reference: Any, channels: int) -> torch.Tensor:
    """The native-size latents: ``reference`` itself when it is latents, else its VAE encoding."""
    if isinstance(reference, torch.Tensor) and reference.ndim == 4 and reference.shape[1] == channels:
        return reference.detach()
    if isinstance(reference, torch.Tensor) and reference.ndim == 3 and reference.shape[-1] == 4 * channels:
        raise ValueError(
            f"reference is packed Flux latents {tuple(reference.shape)}: unpack them first, "
            "FluxPipeline._unpack_latents(latents, height, width, pipe.vae_scale_factor), or pass the image"
        )
    if isinstance(reference, torch.Tensor) and (reference.ndim != 4 or reference.shape[1] != 3):
        raise ValueError(
            f"reference is a tensor of shape {tuple(reference.shape)}: pass latents (batch, {channels}, h, w) "
            "or an image (batch, 3, height, width) in [0, 1]"
        )
    return encode(pipe, reference)


def encode(pipe: Any, image: Any) -> torch.Tensor:
    """The latents of ``image`` in the UNet's space: the VAE's mode, shifted and scaled as the
    pipeline's own image-to-image encoding does. An fp16 VAE that asks to be upcast
    (``force_upcast``, SDXL's) encodes in float32 and is cast back, unchanged."""
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise ValueError("reference is an image but the pipeline has no VAE to encode it; pass latents instead")
    pixels = pipe.image_processor.preprocess(image)
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        with torch.no_grad():
            latents = vae.encode(pixels.to(vae.device, dtype)).latent_dist.mode()
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        mean = torch.tensor(mean).view(shape).to(latents)
        std = torch.tensor(std).view(shape).to(latents)
        return (latents - mean) * config.scaling_factor / std
    shift = getattr(config, "shift_factor", None) or 0.0
    return (latents - shift) * config.scaling_factor


def _pipeline_model(pipe: Any) -> Any:
    """The pipeline's UNet, or its transformer when the guided mode reads it."""
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return unwrap_unet(unet)
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and is_guided_transformer(unwrap_unet(transformer)):
        return unwrap_unet(transformer)
    if transformer is not None:
        raise ValueError(
            f"upscale takes Stable Diffusion, SDXL, SD3 and Flux pipelines; {type(pipe).__name__} has a "
            f"{type(transformer).__name__}, which the guided mode does not read"
        )
    raise ValueError(
        f"upscale takes a Stable Diffusion, SDXL, SD3 or Flux pipeline, got {type(pipe).__name__}; for a bare UNet use "
        "apply_hidiffusion(unet, reference=..., scheduler=...)"
    )


def _check_call(scale: float, strength: float, call_kwargs: dict[str, Any]) -> None:
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 1.0:
        raise ValueError(f"scale must be a number above 1 (3 or 4 for 3-4x the side), got {scale!r}")
    if not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be above 0 and at most 1 (1: the node's denoise 1), got {strength!r}")
    taken = sorted({"image", "height", "width"} & set(call_kwargs))
    if taken:
        raise ValueError(f"upscale sets {', '.join(taken)} from the reference and scale; leave them out")


def _switches_and_options(previous: Any) -> tuple[tuple[bool, bool], dict[str, Any]]:
    """The RAU-Net/MSW-MSA switches and options of HiDiffusion as the user applied it, for
    the guided run; when they did not, the ComfyUI node's: both parts on the auto node's
    default schedule (``measured``)."""
    if previous is None:
        return (True, True), {"schedule": SCHEDULE_NAMES[0]}
    options = {field.name: getattr(previous.options, field.name) for field in fields(previous.options)}
    return (previous.raunet, previous.windows), options
