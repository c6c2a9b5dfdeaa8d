"""HiDiffusion for diffusers pipelines, on the same torch core as the ComfyUI nodes.

    from hidiff.diffusers import apply_hidiffusion, remove_hidiffusion

    apply_hidiffusion(pipe)            # RAU-Net + MSW-MSA, the official defaults
    image = pipe(prompt, height=2048, width=2048).images[0]
    remove_hidiffusion(pipe)           # the pipeline is exactly as before

    native = pipe(prompt, output_type="latent").images
    image = upscale(pipe, native, 4, prompt=prompt).images[0]   # 4x the side, one subject

``upscale`` also takes a Flux pipeline (the native views and the lock on its transformer,
no RAU-Net or MSW-MSA; pass its latents unpacked).

Call-compatible with the official ``hidiffusion`` package (``apply_raunet``,
``apply_window_attn``), for StableDiffusion 1.x/2.x and StableDiffusionXL pipelines,
their img2img, inpaint and ControlNet variants, and bare ``UNet2DConditionModel`` s.
Everything is installed with hooks (torch forward hooks on the UNet, ``diffusers.hooks``
ModelHooks inside it); see :mod:`hidiff.diffusers.install`.

Modules:
    structure  the UNet's layout and family, read from its modules.
    position   the step of a UNet call, from its timestep and the scheduler.
    state      the options, and the state of one UNet call.
    hooks      the hooks that carry out RAD/RAU, pooling, ControlNet residuals, MSW-MSA.
    calls      how the guided mode reads a UNet's and a Flux transformer's calls.
    guide      the guided mode's lock on each call's predicted x0 (``reference=``).
    views      the guided mode's native views.
    transformer  the lock and the views on a Flux transformer.
    upscale    the guided hires fix in one call (``upscale(pipe, reference, scale)``).
    install    registering and removing them.
"""

from __future__ import annotations

from typing import Any

try:
    import diffusers  # noqa: F401 (fail early with the install hint)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "hidiff.diffusers needs diffusers: pip install 'hidiffusion-nodes[diffusers]' (diffusers>=0.34, peft)"
    ) from exc

from ..log import logger
from .install import ATTRIBUTE, Installation
from .state import HiDiffusionOptions
from .structure import UnsupportedModelError, read_layout, unwrap_unet
from .upscale import upscale

__all__ = ["HiDiffusionOptions", "UnsupportedModelError", "apply_hidiffusion", "remove_hidiffusion", "upscale"]


def apply_hidiffusion(
    pipe_or_unet: Any, apply_raunet: bool = True, apply_window_attn: bool = True, **options: Any
) -> Any:
    """Apply HiDiffusion to a diffusers pipeline (its ``.unet``) or a bare UNet.

    Applying again replaces the earlier application (as the official package does).

    Args:
        pipe_or_unet: a Stable Diffusion 1.x/2.x or SDXL pipeline (text-to-image,
            img2img, inpaint, ControlNet), or a ``UNet2DConditionModel``.
        apply_raunet: RAD/RAU and pooling on the official schedule.
        apply_window_attn: MSW-MSA on the highest-resolution self-attention.
        **options: see :class:`HiDiffusionOptions` (``gate_native``,
            ``native_resolution``, ``turbo``, ``aggressive``, ``text_to_image_controlnet``,
            ``schedule``, ``window_grid``, ``window_seed``, ``scheduler``, and the guided mode's
            ``reference`` and ``guide``).

    Returns:
        ``pipe_or_unet``, for chaining.

    Raises:
        UnsupportedModelError: the UNet is not SD1.x/SD2.x- or SDXL-like (the message says
            what it is).
        ValueError: RAU-Net or the guided mode on a bare UNet without ``scheduler=`` (the
            step or the noise schedule is unknown), or a ``reference`` that is not latents
            of this UNet's channels.
    """
    unet, pipeline = _split(pipe_or_unet)
    settings = HiDiffusionOptions.from_kwargs(options)
    layout = read_layout(unet)
    if apply_raunet and pipeline is None and settings.scheduler is None:
        raise ValueError(
            "RAU-Net switches by step, which a bare UNet cannot know: pass scheduler=<the scheduler "
            "your loop uses>, apply to the pipeline instead, or use apply_raunet=False"
        )
    remove_hidiffusion(unet)
    installation = Installation(
        unet, layout, settings, raunet=apply_raunet, windows=apply_window_attn, pipeline=pipeline
    )
    installation.attach()
    setattr(unet, ATTRIBUTE, installation)
    parts = [name for name, on in (("RAU-Net", apply_raunet), ("MSW-MSA", apply_window_attn)) if on]
    logger.info(
        f"applied {' + '.join(parts) or 'nothing'} ({settings.schedule} schedule) to a {layout.describe()}; "
        f"{'inactive at or below' if settings.gate_native else 'also active at'} "
        f"the native {installation.native_latent}x{installation.native_latent} latent"
    )
    return pipe_or_unet


def remove_hidiffusion(pipe_or_unet: Any) -> Any:
    """Remove HiDiffusion from a pipeline or UNet; a no-op when it is not applied.

    Every hook and attribute is removed, so outputs are bit-identical to a pipeline that
    never had HiDiffusion.
    """
    unet, _ = _split(pipe_or_unet)
    installation = getattr(unet, ATTRIBUTE, None)
    if installation is not None:
        installation.detach()
        delattr(unet, ATTRIBUTE)
    return pipe_or_unet


def _split(pipe_or_unet: Any) -> tuple[Any, Any]:
    """(UNet, pipeline or None) from what the user passed."""
    unet = getattr(pipe_or_unet, "unet", None)
    if unet is not None:
        return unwrap_unet(unet), pipe_or_unet
    if getattr(pipe_or_unet, "transformer", None) is not None:
        raise UnsupportedModelError(
            f"{type(pipe_or_unet).__name__} has a transformer, not a UNet; HiDiffusion applies to SD1.x/SD2.x/SDXL "
            "UNets (for a Flux or SD3 pipeline, upscale() runs the guided hires fix: the lock and the native views)"
        )
    return unwrap_unet(pipe_or_unet), None
