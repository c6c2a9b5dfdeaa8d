"""The guided hires fix's low-band lock in ComfyUI: a post-CFG function on the patched clone.

ComfyUI hands every ``sampler_post_cfg_function`` the CFG result (the denoised prediction)
of each model call, with the call's sigma, input and model; what it returns is what the
sampler steps with. So the lock (:mod:`hidiff.core.guide`) works under every sampler and
scheduler, multistep ones included, and stacks with other nodes' post-CFG functions in the
order they were applied.

The reference is the upscaled latent the node hands to the KSampler, in the model's raw
latent space; it is moved into the sampler's space (``process_latent_in``) and low-passed
once per run. A call the lock cannot apply to (another size than the reference, a batch
that does not fit it, the native-size first pass of a hires fix) is handed on unchanged,
and the run is told once.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.guide import lock_low_band, lock_weight, locked_band, reference_low_band
from ..core.schedule import current_sigma
from ..core.settings import GuideSettings
from ..log import logger
from .patch_base import GUIDE, SharedPatch, effect_of
from .run_state import install_run_state, noise_level, run_state

EFFECT = GUIDE
POST_CFG = "sampler_post_cfg_function"


class LowBandLock(SharedPatch):
    """The post-CFG function: ``denoised`` with its low band locked to the reference's.

    Args:
        reference: the upscaled latent (B, 4, H, W) in the model's raw latent space; kept, never changed.
        band: (height, width) of the image the reference was upscaled from: the band it holds
            (the lock holds ``settings.cutoff`` of it).
        settings: strength, exponent, low-pass and cutoff.
    """

    hidiffusion_effect = EFFECT

    def __init__(self, reference: torch.Tensor, band: tuple[int, int], settings: GuideSettings) -> None:
        self.reference = reference.detach().clone()
        self.band = locked_band(band, settings.cutoff)
        self.settings = settings

    def __repr__(self) -> str:
        height, width = self.reference.shape[-2:]
        return f"LowBandLock(reference={width}x{height}, band={self.band[1]}x{self.band[0]}, {self.settings})"

    def __call__(self, args: dict) -> torch.Tensor:
        denoised = args["denoised"]
        options = args.get("model_options", {}).get("transformer_options", {})
        state = run_state(options, EFFECT)
        problem = self.problem_with(denoised)
        if problem is not None:
            message = f"HiDiffusion Hires Fix: {problem}; that call runs without the lock"
            if state is not None:
                state.tell_once(message)
            else:
                logger.debug(message)
            return denoised
        sigma = current_sigma(args["sigma"])
        weight = lock_weight(noise_level(state, sigma, args["model"].model_sampling), self.settings)
        if weight == 0.0:
            return denoised
        target = self.reference_low(args["model"], denoised, state)
        return lock_low_band(denoised, target, weight, self.band, self.settings.lowpass)

    def problem_with(self, denoised: torch.Tensor) -> str | None:
        """Why the lock cannot apply to a call's prediction, or None."""
        height, width = self.reference.shape[-2:]
        if denoised.ndim != 4 or tuple(denoised.shape[-2:]) != (height, width):
            got = "x".join(str(s) for s in reversed(denoised.shape[-2:]))
            return f"a {got} latent is not the {width}x{height} latent the node upscaled"
        batch, references = denoised.shape[0], self.reference.shape[0]
        if references != 1 and batch % references != 0:
            return f"a batch of {batch} does not fit the {references} reference latents"
        return None

    def reference_low(self, model: Any, like: torch.Tensor, state: Any) -> torch.Tensor:
        """The reference's low band in the sampler's space, on ``like``'s device and dtype,
        repeated to its batch; worked out once per run."""
        key = ("reference_low", like.device, like.dtype, like.shape[0])
        memo = state.memo if state is not None else {}
        if key not in memo:
            reference = model.process_latent_in(self.reference.to(like.device, torch.float32))
            size = (int(like.shape[-2]), int(like.shape[-1]))
            low = reference_low_band(reference, size, self.band, self.settings.lowpass, like.shape[0])
            memo[key] = low.to(like.dtype)
        return memo[key]


def apply_lock(model: Any, reference: torch.Tensor, band: tuple[int, int], settings: GuideSettings) -> Any:
    """A clone of ``model`` with the lock as a post-CFG function (replacing an earlier lock of
    the pack, after any other node's); ``model`` itself is untouched."""
    patched = model.clone()
    functions = patched.model_options.get(POST_CFG, [])
    patched.model_options[POST_CFG] = [fn for fn in functions if effect_of(fn) != EFFECT]
    patched.set_model_sampler_post_cfg_function(LowBandLock(reference, band, settings))
    install_run_state(patched, EFFECT)
    return patched
