"""The guided hires fix (HiDiffusionHiresFix) in real ComfyUI: the lock per call against the
formula written here, its place among other post-CFG functions, multistep samplers, the
native-size pass, what it leaves untouched, and bad input before any sampling."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import snapshot
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from harness import conditioning, fresh_model, pack_module, sample, tiny_model

NATIVE_PX = 128
NATIVE = NATIVE_PX // 8
ADVANCED = f"native_resolution: {NATIVE_PX}"


def guided(pack, model, latent, scale_by=3.0, advanced=ADVANCED, **toggles):
    values = {"raunet": True, "msw_msa": True, **toggles}
    out = (
        pack["HiDiffusionHiresFix"]
        .execute(model=model, latent=latent, scale_by=scale_by, advanced=advanced, **values)
        .result
    )
    return out[0], out[1]


def native_latent(family="sd15", seed=4, batch=1) -> dict:
    return {"samples": torch.randn(batch, 4, NATIVE, NATIVE, generator=torch.Generator().manual_seed(seed)) * 0.5}


def img2img(model, family, latent, *, seed=3, steps=3, sampler="euler", denoise=1.0):
    import comfy.sample

    samples = latent["samples"]
    noise = comfy.sample.prepare_noise(samples, seed)
    positive, negative = conditioning(family, seed=11), conditioning(family, seed=12)
    return comfy.sample.sample(
        model, noise, steps, 5.0, sampler, "normal", positive, negative, samples,
        denoise=denoise, seed=seed, disable_pbar=True,
    )  # fmt: skip


class Recorder:
    """A post-CFG function of another node: records what it gets and hands it on."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, torch.Tensor]] = []

    def __deepcopy__(self, memo: dict) -> Recorder:  # ComfyUI 0.3.64 deep-copies model_options in clone()
        return self

    def __call__(self, args: dict) -> torch.Tensor:
        self.calls.append((float(args["sigma"].max()), args["denoised"].clone()))
        return args["denoised"]


def with_post_cfg(model, function):
    patched = model.clone()
    patched.set_model_sampler_post_cfg_function(function)
    return patched


def noise_level(model, sigma: float) -> float:
    """The model timestep of ``sigma`` over 999, interpolated in log sigma (the discrete schedule)."""
    log_sigmas = model.get_model_object("model_sampling").log_sigmas.double().numpy()
    return float(np.interp(math.log(sigma), log_sigmas, np.arange(len(log_sigmas)))) / (len(log_sigmas) - 1)


def expected_lock(model, denoised, reference, sigma, band, exponent=3.0):
    """denoised + g * (low(reference) - low(denoised)); low: area to the band, bicubic back."""

    def low(x):
        return F.interpolate(F.adaptive_avg_pool2d(x, band), size=x.shape[-2:], mode="bicubic", align_corners=False)

    weight = (0.5 * (1 + math.cos(math.pi * (1 - noise_level(model, sigma))))) ** exponent
    reference = model.model.process_latent_in(reference)
    return denoised + weight * (low(reference) - low(denoised))


@pytest.mark.parametrize(
    ("sampler", "cutoff"), [("euler", 1.0), ("dpmpp_2m", 1.0), ("euler_ancestral", 1.0), ("euler", 0.5)]
)
def test_each_call_is_locked_by_the_formula_between_other_post_cfg_functions(pack, sampler, cutoff):
    """Another node's post-CFG function before the node and one after it: the lock gets the
    first one's output and hands the second one the formula's result, at every call, under a
    one-step, a multistep and an ancestral sampler, and with half the band locked."""
    before, after = Recorder(), Recorder()
    advanced = f"{ADVANCED}\ncutoff: {cutoff}"
    model, latent = guided(pack, with_post_cfg(tiny_model("sd15"), before), native_latent(), advanced=advanced)
    model = with_post_cfg(model, after)
    img2img(model, "sd15", latent, sampler=sampler)
    assert len(before.calls) == len(after.calls) == 3
    gaps = []
    for (sigma, given), (_, result) in zip(before.calls, after.calls):
        band = (round(NATIVE * cutoff), round(NATIVE * cutoff))
        expected = expected_lock(model, given, latent["samples"], sigma, band)
        torch.testing.assert_close(result, expected, atol=2e-3, rtol=1e-5)
        gaps.append(float((expected - given).abs().max()))
    assert max(gaps) > 100 * 2e-3, f"the lock must move the prediction far more than the tolerance: {gaps}"


def test_the_lock_keeps_the_upscaled_composition(pack):
    """At full denoise the result's low band stays nearer the reference's; without the lock
    (strength 0) the same run drifts far from it."""
    latent = native_latent(seed=8)
    locked_model, upscaled = guided(pack, tiny_model("sd15"), latent)
    free_model, _ = guided(pack, tiny_model("sd15"), latent, advanced=f"{ADVANCED}\nstrength: 0")
    locked = img2img(locked_model, "sd15", upscaled, steps=4)
    free = img2img(free_model, "sd15", upscaled, steps=4)

    def low_gap(x):
        return float((F.adaptive_avg_pool2d(x - upscaled["samples"], (NATIVE, NATIVE))).abs().mean())

    assert low_gap(locked) < 0.5 * low_gap(free), (low_gap(locked), low_gap(free))


def test_the_outputs_follow_the_auto_node_and_upscale_the_latent(pack, logs):
    latent = native_latent(batch=2)
    latent["batch_index"] = [4, 5]
    model, upscaled = guided(pack, tiny_model("sd15"), latent, scale_by=2.5)
    assert upscaled["samples"].shape == (2, 4, 40, 40) and upscaled["batch_index"] == [4, 5]
    torch.testing.assert_close(
        upscaled["samples"], F.interpolate(latent["samples"], size=(40, 40), mode="bicubic", align_corners=False)
    )
    functions = model.model_options["sampler_post_cfg_function"]
    assert [type(f).__name__ for f in functions] == ["LowBandLock"]
    auto = (
        pack["ApplyHiDiffusion"]
        .execute(model=tiny_model("sd15"), width=320, height=320, raunet=True, msw_msa=True, advanced=ADVANCED)
        .result[0]
    )
    plan_lines = [m for m in logs.messages(logging.INFO) if m.startswith("[HiDiffusion] HiDiffusion")]
    assert plan_lines[0].split(": ", 1)[1].split("\n  lock")[0] == plan_lines[1].split(": ", 1)[1]

    def windows(m):
        replaces = m.model_options["transformer_options"]["patches_replace"]["attn1"]
        return {key: repr(patch) for key, patch in replaces.items()}

    assert windows(model) == windows(auto) != {}
    again, _ = guided(pack, model, latent)
    assert [type(f).__name__ for f in again.model_options["sampler_post_cfg_function"]] == ["LowBandLock"]


def test_a_native_size_pass_with_the_guided_model_is_unpatched(pack, logs):
    """Wired into the first pass too, the guided model samples the native size as unpatched."""
    model, _ = guided(pack, tiny_model("sd15"), native_latent())
    unpatched = sample(tiny_model("sd15"), "sd15", NATIVE, NATIVE, seed=6)
    assert torch.equal(sample(model, "sd15", NATIVE, NATIVE, seed=6), unpatched)
    told = [m for m in logs.messages(logging.WARNING) if "runs without the lock" in m]
    assert len(told) == 1 and "16x16 latent is not the 48x48 latent" in told[0]


def test_nothing_the_user_had_changes_and_the_same_seed_gives_the_same_image(pack):
    model = fresh_model("sdxl")
    latent = native_latent(seed=2)
    latent_before = latent["samples"].clone()
    model_before = snapshot.of_patcher(model)
    patched, upscaled = guided(pack, model, latent)
    assert model_before.differences(snapshot.of_patcher(model)) == []
    reference_before = upscaled["samples"].clone()
    torch.manual_seed(21)
    plain = img2img(model, "sdxl", upscaled)
    rng_after_plain = snapshot.rng_state()
    torch.manual_seed(21)
    first = img2img(patched, "sdxl", upscaled)
    assert snapshot.rng_state() == rng_after_plain, "the guided run draws nothing an unpatched run does not"
    assert not torch.equal(first, plain)
    assert torch.equal(img2img(patched, "sdxl", upscaled), first)
    assert torch.equal(latent["samples"], latent_before) and torch.equal(upscaled["samples"], reference_before)
    assert model_before.differences(snapshot.of_patcher(model, rng=False)) == []


@pytest.mark.parametrize(
    ("latent", "scale_by", "advanced", "message"),
    [
        (native_latent(), 1.0, ADVANCED, "scale_by = 1 gives a 128x128px target, not larger than the 128x128px latent"),
        ({"samples": torch.zeros(1, 4, 3, 16, 16)}, 3.0, ADVANCED, "latent: a 4-D latent"),
        (
            {"samples": torch.zeros(1, 16, 16, 16)},
            3.0,
            ADVANCED,
            "latent: 16 channels; this model's latents (SD15) have 4",
        ),
        (native_latent(), 3.0, "strength: 2", "strength = 2 is out of range"),
        (native_latent(), 3.0, "lowpass: gauss", "lowpass = 'gauss' is not valid; use one of resize, fft"),
        (native_latent(), 3.0, "cutoff: 0", "cutoff = 0 is out of range: it must be above 0 and at most 1"),
        (native_latent(), 3.0, "upscale: bicubic", "advanced: unknown key(s) upscale"),
    ],
)
def test_bad_input_is_refused_naming_it(pack, latent, scale_by, advanced, message):
    with pytest.raises(ValueError) as error:
        guided(pack, tiny_model("sd15"), latent, scale_by=scale_by, advanced=advanced)
    assert message in str(error.value)


def test_bad_yaml_is_refused_at_queue_time_and_other_models_by_name(pack):
    node = pack["HiDiffusionHiresFix"]
    assert "exponent = -1 is out of range" in node.validate_inputs(advanced="exponent: -1")
    assert node.validate_inputs(advanced="exponent: 2\nlowpass: fft\nschedule: official") is True
    pose = fresh_model("sd15")  # a UNet that does not generate images (SDPose's heatmap head): the plan refuses it
    pose.model.diffusion_model.heatmap_head = torch.nn.Conv2d(32, 17, 1)
    with pytest.raises(ValueError, match="HiDiffusion applies to SD1.x.*heatmap head"):
        guided(pack, pose, native_latent())
    assert pack_module("hidiff.comfyui.guided_nodes").UPSCALE_METHODS[0] == "bicubic"
