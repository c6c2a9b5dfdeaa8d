"""``HiDiffusionHiresFix`` ("HiDiffusion Hires Fix"): one subject at 3-4x the side.

A hires fix a user recognises: a native-size latent in (a KSampler's, or VAE Encode of an
existing image), the upscaled latent and a model out, for a stock KSampler. The model is
the auto node's HiDiffusion for the target size (the same plan, :func:`auto_nodes.plan_with`,
with its per-call native gate; on UNets only) plus the low-band lock (:mod:`hidiff.comfyui.guide`),
which keeps the native composition, and the native views (:mod:`hidiff.comfyui.native_views`),
which keep the subject's local structure. The lock and the views read the noise level from the
model's own sampling object, so they serve DiT and rectified-flow models (Flux, SD3) too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..core.guide import LOWPASS_MODES, upscaled_size
from ..core.settings import GuideSettings
from ..log import logger
from .auto_nodes import ADVANCED_KEYS, AutoOptions, apply_plan, auto_options, plan_with
from .guide import apply_lock
from .model_info import is_unet, latent_format_of, unet_map_of
from .native_views import apply_views
from .node_common import PackNode
from .params import (
    ADVANCED,
    ParameterError,
    naming_the_yaml,
    parse_yaml_parameters,
    require_choice,
    require_fraction,
    require_number,
)

UPSCALE_METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")
"""How the latent handed to the KSampler is upscaled: Upscale Latent By's methods, bicubic first."""
GUIDE_KEYS = {
    "strength": "the lock's weight at pure noise, 0 to 1 (default 1; 0 = no lock, HiDiffusion alone)",
    "exponent": "how fast the lock fades as noise falls: weight = strength * (cosine ramp)^exponent (default 3)",
    "lowpass": f"which frequencies are locked: {' or '.join(LOWPASS_MODES)} (default resize)",
    "cutoff": "the locked band as a fraction of the input latent's own, above 0 up to 1 (default 1)",
    "views": "the native views' share in the large pass's prediction, 0 to 1 (default 1: the large latent "
    "denoised as native-size interleaved views, DemoFusion's dilated sampling, which keeps the subject's local "
    "structure at 2x the side and above; 0: the HiDiffusion large call alone)",
    "views_blur": "the Gaussian blur (sigma, latent pixels) of the views' input at pure noise, 0 to 4 (default 2)",
    "views_degrain": "sigma (view pixels) of the per-view offsets taken out of the views' prediction, "
    "0 to 4 (default 1; 0 leaves the views' grid)",
    "upscale_method": f"how the latent is upscaled for the KSampler: {', '.join(UPSCALE_METHODS)} (default bicubic)",
}
ALL_KEYS = {**ADVANCED_KEYS, **GUIDE_KEYS}


@dataclass(frozen=True)
class GuidedOptions:
    """The checked ``advanced`` keys: the auto node's and the lock's."""

    auto: AutoOptions
    guide: GuideSettings
    upscale_method: str = UPSCALE_METHODS[0]


def parse_guided(text: str | None) -> GuidedOptions:
    """The ``advanced`` YAML, checked; errors name the key and list the valid ones."""
    values = parse_yaml_parameters(text, ALL_KEYS, input_name="advanced")
    auto = auto_options(values)
    guide = {key: values[key] for key in GUIDE_KEYS if key in values}
    with naming_the_yaml(guide, input_name="advanced"):
        settings = GuideSettings(
            strength=require_fraction("strength", guide.get("strength", GuideSettings.strength)),
            exponent=_exponent(guide.get("exponent", GuideSettings.exponent)),
            lowpass=require_choice("lowpass", guide.get("lowpass", GuideSettings.lowpass), LOWPASS_MODES),
            cutoff=_cutoff(guide.get("cutoff", GuideSettings.cutoff)),
            views=require_fraction("views", guide.get("views", GuideSettings.views)),
            views_blur=_sigma("views_blur", guide.get("views_blur", GuideSettings.views_blur)),
            views_degrain=_sigma("views_degrain", guide.get("views_degrain", GuideSettings.views_degrain)),
        )
        method = require_choice("upscale_method", guide.get("upscale_method", UPSCALE_METHODS[0]), UPSCALE_METHODS)
    return GuidedOptions(auto, settings, method)


def _cutoff(value: Any) -> float:
    cutoff = require_number("cutoff", value)
    if not 0.0 < cutoff <= 1.0:
        raise ParameterError(f"cutoff = {value!r} is out of range: it must be above 0 and at most 1")
    return cutoff


def _sigma(key: str, value: Any) -> float:
    sigma = require_number(key, value)
    if not 0.0 <= sigma <= 4.0:
        raise ParameterError(f"{key} = {value!r} is out of range: it must be 0 to 4")
    return sigma


def _exponent(value: Any) -> float:
    exponent = require_number("exponent", value)
    if not 0.0 <= exponent <= 16.0:
        raise ParameterError(f"exponent = {value!r} is out of range: it must be 0 to 16")
    return exponent


def target_size(samples: Any, scale_by: float, model: Any) -> tuple[int, int]:
    """The upscaled latent's (height, width), as Upscale Latent By rounds it; checked against
    the model's own latent format (its channels, and an image latent, not a video one)."""
    name, channels, dimensions = latent_format_of(model)
    if dimensions != 2:
        raise ParameterError(
            f"model: {name} takes {dimensions}-D latents (a video or audio model); the Hires Fix upscales image "
            "latents. Connect an image model (SD1.x/SD2.x/SDXL, Flux, SD3, AuraFlow, ...)"
        )
    if samples.ndim != 4:
        raise ParameterError(
            f"latent: a {samples.ndim - 1}-D latent (shape {list(samples.shape)}) is not an image latent; "
            "connect an image latent of the model this node patches (KSampler or VAE Encode output)"
        )
    if samples.shape[1] != channels:
        raise ParameterError(
            f"latent: {samples.shape[1]} channels; this model's latents ({name}) have {channels}. Connect a latent "
            "of the model this node patches (its KSampler's or its VAE Encode's)"
        )
    height, width = int(samples.shape[-2]), int(samples.shape[-1])
    target = upscaled_size(height, width, scale_by)
    if target[0] <= height or target[1] <= width:
        raise ParameterError(
            f"scale_by = {scale_by:g} gives a {target[1] * 8}x{target[0] * 8}px target, not larger than the "
            f"{width * 8}x{height * 8}px latent; use a scale_by above 1 (3 or 4 for 3-4x the side)"
        )
    return target


def hidiffusion_for(model: Any, size: tuple[int, int], scale_by: float, options: GuidedOptions, raunet: bool,
                    msw_msa: bool) -> Any:  # fmt: skip
    """``model`` with HiDiffusion for the target size where it is a UNet (the auto node's plan
    and gate; a UNet the plan cannot serve, a video UNet say, is refused by it); any other
    model (a DiT: Flux, SD3, AuraFlow) comes back as it is, and the log says so."""
    if not is_unet(model):
        logger.info(
            "HiDiffusion Hires Fix: %s; it gets the lock and the native views, without RAU-Net and MSW-MSA "
            "(they act on SD1.x/SD2.x/SDXL UNets)", unet_map_of(model).describe()
        )  # fmt: skip
        return model
    plan = plan_with(model, size[0], size[1], options.auto)
    logger.info(f"HiDiffusion Hires Fix: {plan.describe()}\n  lock: {options.guide}, from {scale_by:g}x")
    return apply_plan(model, plan, raunet, msw_msa, options.auto) if plan.active else model


class HiDiffusionHiresFix(PackNode):
    """A hires fix that keeps one subject at 3-4x the model's native side and redraws the detail:
    connect the native-size latent (from a KSampler, or VAE Encode of an existing image) and feed
    both outputs to a KSampler (denoise 1). The model gets a lock that holds the image's large
    shapes to the upscaled input while noise is high, so the composition stays, and native
    views: from 2x the side up it denoises the large latent as interleaved native-size views,
    so a head gets two eyes of its own size instead of many small ones (DemoFusion's dilated
    sampling; `views: 0` in advanced gives HiDiffusion's large call instead). Works with every
    sampler and scheduler, and on DiT models (Flux, SD3, AuraFlow) with the lock and the views.
    """

    node_id = "HiDiffusionHiresFix"
    display_name = "HiDiffusion Hires Fix"

    @classmethod
    def yaml_keys(cls) -> dict[str, str]:
        return ALL_KEYS

    @classmethod
    def node_inputs(cls) -> list[Any]:
        return [
            io.Model.Input(
                "model",
                tooltip="An image model: SD1.x, SD2.x or SDXL (HiDiffusion, the lock and the native views), or a DiT "
                "such as Flux, SD3 or AuraFlow (the lock and the native views); it is never changed.",
            ),
            io.Latent.Input("latent", tooltip="The native-size latent to upscale: a KSampler's, or VAE Encode's."),
            io.Float.Input(
                "scale_by",
                default=3.0,
                min=1.05,
                max=8.0,
                step=0.05,
                tooltip="Target side = latent side x scale_by (3 or 4: 3-4x the native side).",
            ),
            io.Boolean.Input(
                "raunet",
                default=True,
                tooltip="RAU-Net for the target size (as the HiDiffusion node), on SD1.x/SD2.x/SDXL UNets only; acts on "
                "the large call, which the native views replace at their default share (views: 1).",
            ),
            io.Boolean.Input(
                "msw_msa",
                default=True,
                tooltip="MSW-MSA windowed attention for the large call (faster at high resolution), on SD1.x/SD2.x/SDXL "
                "UNets only; the native views replace that call at their default share (views: 1).",
            ),
            io.String.Input(
                "advanced",
                optional=True,
                multiline=True,
                default="",
                **ADVANCED,
                tooltip="Optional YAML: strength, exponent, lowpass, cutoff, views, views_blur, views_degrain, "
                "upscale_method, and the HiDiffusion node's keys (schedule, native_resolution, window_grid, ...).",
            ),
        ]

    @classmethod
    def node_outputs(cls) -> list[Any]:
        return [
            io.Model.Output(
                tooltip="The model with the low-band lock, the native views and HiDiffusion for the target size."
            ),
            io.Latent.Output(tooltip="The upscaled latent: sample it with the model above, denoise 1."),
        ]

    @classmethod
    def validate_inputs(cls, advanced: str | None = "") -> bool | str:
        try:
            parse_guided(advanced or "")
        except ValueError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls, model: Any, latent: dict, scale_by: float, raunet: bool, msw_msa: bool, advanced: str | None = None
    ) -> io.NodeOutput:
        import comfy.utils

        options = parse_guided(advanced)
        samples = latent["samples"]
        height, width = target_size(samples, scale_by, model)
        patched = hidiffusion_for(model, (height, width), scale_by, options, raunet, msw_msa)
        upscaled = comfy.utils.common_upscale(samples, width, height, options.upscale_method, "disabled")
        band = (int(samples.shape[-2]), int(samples.shape[-1]))
        patched = apply_lock(patched, upscaled, band, options.guide)
        patched = apply_views(patched, (height, width), band, options.guide)
        return io.NodeOutput(patched, {**latent, "samples": upscaled})


GUIDED_NODES = [HiDiffusionHiresFix]
