"""The HiDiffusion Hires Fix on DiTs with rectified-flow schedules (a tiny random Flux, and a
tiny random SD3 MMDiT with its discrete-flow schedule): the lock alone per call against the
formula written here, with the noise level the call's sigma from each model's own schedule
(the unshifted time, in closed form, would differ); the
native views on them; what is said once; bad input."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from test_guided_comfy import Recorder, with_post_cfg
from test_msw_msa_comfy import seeded_model, tiny_flux

NATIVE = 16
"""The native latent's side (128 px); Flux cuts it into 2x2 patches."""
CHANNELS = 16


def dit_conditioning(seed: int) -> list:
    """A CONDITIONING list of the tiny DiTs' widths: text tokens and the pooled vector."""
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 12, 32, generator=generator), {"pooled_output": torch.randn(1, 32, generator=generator)}]]


def native_latent(seed: int = 4, channels: int = CHANNELS) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, channels, NATIVE, NATIVE, generator=generator) * 0.5}


def hires_fix(pack, model, latent, advanced: str = "", scale_by: float = 3.0):
    node = pack["HiDiffusionHiresFix"]
    out = node.execute(model=model, latent=latent, scale_by=scale_by, raunet=True, msw_msa=True, advanced=advanced)
    return out.result[0], out.result[1]


def sample(model, latent, *, steps: int = 3, sampler: str = "euler", seed: int = 3) -> torch.Tensor:
    import comfy.sample

    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed)
    return comfy.sample.sample(
        model, noise, steps, 3.0, sampler, "simple", dit_conditioning(11), dit_conditioning(12), samples,
        denoise=1.0, seed=seed, disable_pbar=True,
    )  # fmt: skip


def tiny_sd3(weight_seed: int = 1234):
    """A tiny SD3 MMDiT (2 joint blocks: hidden 128, 2 heads) with seeded random weights, through
    ComfyUI's own SD3 class (its discrete-flow sampling at shift 3, its 16-channel latent format)."""
    import comfy.supported_models

    config = {
        "in_channels": 16,
        "pos_embed_scaling_factor": None,
        "patch_size": 2,
        "out_channels": 16,
        "depth": 2,
        "adm_in_channels": 32,
        "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 32, "out_features": 128}},
        "pos_embed_max_size": 32,
        "num_patches": 1024,
        "dtype": torch.float32,
    }
    return seeded_model(comfy.supported_models.SD3(config), weight_seed, buffers=("pos_embed",))


def tiny_auraflow(weight_seed: int = 1234):
    """A tiny AuraFlow MMDiT (one joint and one single block, width 64) with seeded random
    weights, through ComfyUI's own AuraFlow class (discrete flow at shift 1.73, SDXL's 4-channel
    latent format)."""
    import comfy.supported_models

    config = {
        "cond_seq_dim": 32, "in_channels": 4, "out_channels": 4, "patch_size": 2, "dim": 64, "n_layers": 2,
        "n_double_layers": 1, "n_heads": 2, "global_conddim": 64, "max_seq": 1024, "dtype": torch.float32,
    }  # fmt: skip
    return seeded_model(comfy.supported_models.AuraFlow(config), weight_seed)


def flux_time(model, sigma: float) -> float:
    """The unshifted time (1 − the sampling percent) of a Flux sigma, in closed form: Flux's
    schedule is sigma = e^shift / (e^shift + 1/t − 1) at time t, so t = 1 / (1 + e^shift (1/sigma − 1))."""
    shift = model.get_model_object("model_sampling").shift
    return 1.0 / (1.0 + math.exp(shift) * (1.0 / sigma - 1.0))


def sd3_time(model, sigma: float) -> float:
    """The same for SD3's and AuraFlow's discrete-flow schedule, sigma = shift·t / (1 + (shift − 1)·t),
    so t = sigma / (shift − (shift − 1)·sigma)."""
    shift = model.get_model_object("model_sampling").shift
    return sigma / (shift - (shift - 1.0) * sigma)


DITS = {
    "flux": (tiny_flux, flux_time, 16),
    "sd3": (tiny_sd3, sd3_time, 16),
    "auraflow": (tiny_auraflow, sd3_time, 4),
}
"""Each tiny DiT's builder, its schedule's unshifted time in closed form, its latent channels."""


def lock_weight(level: float) -> float:
    """The node's default weight (strength 1, exponent 3) at a noise level."""
    return (0.5 * (1 + math.cos(math.pi * (1 - level)))) ** 3


def expected_lock(model, denoised, reference, level):
    """denoised + g · (low(reference) − low(denoised)); low: area to the native side, bicubic
    back; g at the noise ``level`` (a rectified-flow call's sigma: its share of noise)."""

    def low(x):
        return F.interpolate(F.adaptive_avg_pool2d(x, NATIVE), size=x.shape[-2:], mode="bicubic", align_corners=False)

    weight = lock_weight(level)
    reference = model.model.process_latent_in(reference)
    return denoised + weight * (low(reference) - low(denoised))


@pytest.mark.parametrize(
    ("dit", "sampler"), [("flux", "euler"), ("flux", "dpmpp_2m"), ("sd3", "euler"), ("auraflow", "euler")]
)
def test_the_lock_on_a_dit_follows_the_formula_at_every_call(pack, dit, sampler):
    """Flux's, SD3's and AuraFlow's sigmas are rectified-flow ones (the share of noise in the
    call's input, 1 at pure noise), not EDM ones, on differently shifted schedules: the weight
    is read at each call's sigma as the model's own schedule placed it, so the first call is
    locked in full and later ones less. The unshifted time (1 − the sampling percent, in closed
    form) would give other weights, by far more than the tolerance."""
    build, time_of, channels = DITS[dit]
    before, after = Recorder(), Recorder()
    model, latent = hires_fix(
        pack, with_post_cfg(build(), before), native_latent(channels=channels), advanced="views: 0"
    )
    sample(with_post_cfg(model, after), latent, sampler=sampler)
    assert len(before.calls) == len(after.calls) == 3
    gaps, unshifted_gaps = [], []
    for (sigma, given), (_, result) in zip(before.calls, after.calls, strict=True):
        expected = expected_lock(model, given, latent["samples"], sigma)
        torch.testing.assert_close(result, expected, atol=2e-3, rtol=1e-5)
        gaps.append(float((expected - given).abs().max()))
        unshifted = expected_lock(model, given, latent["samples"], time_of(model, sigma))
        unshifted_gaps.append(float((expected - unshifted).abs().max()))
    assert before.calls[0][0] == pytest.approx(1.0)
    assert max(gaps) > 100 * 2e-3, f"the lock must move the prediction far more than the tolerance: {gaps}"
    assert max(unshifted_gaps) > 10 * 2e-3, f"the shift must matter far more than the tolerance: {unshifted_gaps}"


@pytest.mark.parametrize("dit", DITS)
def test_a_dit_gets_the_lock_and_the_views_without_hidiffusion_and_is_told_once(pack, logs, dit):
    """The node hands a Flux, SD3 or AuraFlow model back with the lock and the views only (no
    UNet patch can apply), says so once, and the large latent is denoised as native-size views:
    the model sees 9 views of the native side and never the whole 3x latent."""
    build, _, channels = DITS[dit]
    flux = build()
    shapes: list[tuple[int, ...]] = []
    hook = flux.model.diffusion_model.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape)))
    try:
        model, latent = hires_fix(pack, flux, native_latent(channels=channels))
        assert latent["samples"].shape == (1, channels, 3 * NATIVE, 3 * NATIVE)
        assert [type(f).__name__ for f in model.model_options["sampler_post_cfg_function"]] == ["LowBandLock"]
        assert not model.model_options["transformer_options"].get("patches_replace")
        with_views = sample(model, latent, steps=2)
    finally:
        hook.remove()
    assert shapes and set(shapes) == {(18, channels, NATIVE, NATIVE)}, set(shapes)  # cond + uncond, 9 views each
    told = [m for m in logs.messages(logging.INFO) if "without RAU-Net and MSW-MSA" in m]
    assert len(told) == 1 and "is not a UNet" in told[0], told
    large_only, _ = hires_fix(pack, build(), native_latent(channels=channels), advanced="views: 0")
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
