"""Compatibility with samplers and schedules: ancestral and SDE samplers, CFG 1, restart
sampling and others.

See compat_common for what every test checks and how the table is made from them.
"""

from __future__ import annotations

import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models
import pytest
import torch
from compat_common import (
    FIRST_SIGMA,
    KSAMPLER,
    RAD_END,
    SAMPLERS,
    check_gating,
    check_run,
    compat,
    different,
    last_block_features,
    msw,
    ours_in_a_graph,
    raunet,
    recorded,
    staged,
    through_executor,
    to_sigma,
    windowed,
)
from harness import (
    assert_matches_a_decisive_reference,
    conditioning,
    load_third_party,
    sample,
    tiny_model,
)

# --- samplers --------------------------------------------------------------------------------------


@compat(SAMPLERS, "ancestral and SDE samplers: euler_ancestral", "works")
def test_sampler_euler_ancestral(pack):
    check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=4, sampler="euler_ancestral", seed=3))


@compat(SAMPLERS, "ancestral and SDE samplers: dpmpp_sde, dpmpp_2m_sde", "works")
@pytest.mark.parametrize("sampler", ["dpmpp_sde", "dpmpp_2m_sde"])
def test_sampler_sde(pack, sampler):
    check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=4, sampler=sampler, seed=3))


@compat(
    SAMPLERS,
    "second-order samplers: heun, dpmpp_2s_ancestral",
    "works",
    "Each intermediate evaluation is gated by its own sigma.",
)
@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2s_ancestral"])
def test_sampler_second_order(pack, sampler):
    calls = check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=4, sampler=sampler, seed=3))
    # 4 steps, each but the last (to sigma 0) with a second evaluation (heun: at the next sigma; dpmpp_2s_ancestral
    # with eta 1: at sqrt(sigma * sigma_down), which is again the next sigma), in each of the two patched runs
    assert sum(1 for call in calls if call.block == 3) == 2 * 7


@compat(
    SAMPLERS,
    "karras and exponential schedulers",
    "works",
    "RAU-Net and MSW-MSA follow each call's own sigma, however the schedule spaces them.",
)
@pytest.mark.parametrize("scheduler", ["karras", "exponential"])
def test_schedulers(pack, scheduler):
    check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=6, scheduler=scheduler, seed=3))


def to_model_sampling(family: str):
    return tiny_model(family).get_model_object("model_sampling")


@compat(SAMPLERS, "cfg = 1 (ComfyUI skips the uncond)", "works")
def test_cfg_one(pack):
    calls = check_run(pack, "sdxl", (29, 21), lambda m: sample(m, "sdxl", 29, 21, steps=4, cfg=1.0, seed=4))
    assert {call.batch for call in calls} == {(0,)}


def sample_conds(model, family: str, height: int, width: int, negative_repeats: int, **kwargs) -> torch.Tensor:
    """``harness.sample`` with the negative prompt's tokens repeated: the same conditioning,
    but more than 4x longer than the positive, so ComfyUI runs cond and uncond as separate
    batches (``CONDCrossAttn.can_concat``)."""
    latent = torch.zeros(1, 4, height, width)
    noise = comfy.sample.prepare_noise(latent, 0)
    positive = conditioning(family, seed=11)
    negative = conditioning(family, seed=12)
    negative = [[negative[0][0].repeat(1, negative_repeats, 1), negative[0][1]]]
    return comfy.sample.sample(
        model, noise, 4, 5.0, "euler", "normal", positive, negative, latent, seed=0, disable_pbar=True, **kwargs
    )


@compat(
    SAMPLERS,
    "separate cond/uncond batches",
    "works",
    "Cond and uncond of one step share RAU-Net's state and MSW-MSA's windows, however ComfyUI batches them.",
)
def test_separate_cond_and_uncond_batches(pack):
    model = tiny_model("sd15")
    patched, msw_calls, calls = staged(pack, model)
    patched, features = last_block_features(patched)
    separate = sample_conds(patched, "sd15", 21, 29, negative_repeats=5)
    assert {call.batch for call in calls} == {(0,), (1,)}
    check_gating(model, calls, msw_calls, 21, 29)
    separate_features = per_chunk(features)
    calls.clear()
    features.clear()
    batched = sample_conds(patched, "sd15", 21, 29, negative_repeats=1)
    assert {call.batch for call in calls} == {(1, 0)}
    # Repeating the text tokens changes no attention result, so both runs compute the same
    # features for cond and uncond at every step: float noise is about 3e-7, while windows
    # chosen per call instead of per step differ by about 6e-5.
    batched_features = per_chunk(features)
    assert separate_features.keys() == batched_features.keys()
    for key, h in batched_features.items():
        assert float((separate_features[key] - h).abs().max() / h.abs().max()) < 5e-6, key
    unpatched = sample_conds(model, "sd15", 21, 29, negative_repeats=5)
    assert_matches_a_decisive_reference(separate, batched, unpatched, atol=1e-4, rtol=1e-4)


def per_chunk(features) -> dict:
    """{(sigma, 0 = cond / 1 = uncond): features} from :func:`last_block_features`."""
    return {(round(sigma, 4), chunk): h[index] for sigma, batch, h in features for index, chunk in enumerate(batch)}


@compat(SAMPLERS, "partial sampling: start_step/last_step (KSamplerAdvanced)", "works")
def test_partial_start_and_last_step(pack):
    def run(m):
        return sample(m, "sd15", 21, 29, steps=8, seed=5, start_step=1, last_step=6)

    calls = check_run(pack, "sd15", (21, 29), run)
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(to_model_sampling("sd15"), "normal", 8)]
    assert {round(call.sigma, 4) for call in calls} == {round(s, 4) for s in sigmas[1:6]}


@compat(
    SAMPLERS,
    "partial sampling: denoise < 1",
    "works",
    "Times are sampling percent, so a low denoise skips the early part.",
)
def test_partial_denoise(pack):
    calls = check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=6, seed=5, denoise=0.8))
    assert max(call.sigma for call in calls) < FIRST_SIGMA


RESTART_SIGMAS = [14.0, 8.0, 4.0, 8.0, 4.0, 1.0, 0.0]


@compat(
    SAMPLERS,
    "Restart-style sigmas (sigma rising again mid-run, custom sampling)",
    "works",
    "Nothing is carried from one call or run to the next: every call is gated by its own sigma.",
)
def test_restart_style_sigmas(pack):
    model = tiny_model("sd15")
    patched = msw(
        pack,
        raunet(pack, model, time_mode="sigma", start_time=20.0, end_time=6.0, ca_start_time=20.0, ca_end_time=10.0),
        time_mode="sigma",
        start_time=5.0,
        end_time=0.0,
    )
    recording, calls = recorded(patched)
    recording, msw_calls = windowed(recording)

    def run(m):
        latent = torch.zeros(1, 4, 21, 29)
        return comfy.sample.sample_custom(
            m,
            comfy.sample.prepare_noise(latent, 6),
            5.0,
            comfy.samplers.sampler_object("euler"),
            torch.tensor(RESTART_SIGMAS),
            conditioning("sd15", seed=11),
            conditioning("sd15", seed=12),
            latent,
            disable_pbar=True,
            seed=6,
        )

    first = run(recording)
    assert torch.isfinite(first).all()
    rad = {(call.sigma, call.size) for call in calls if call.block == 3}
    assert rad == {(14.0, (6, 8)), (8.0, (6, 8)), (4.0, (11, 15)), (1.0, (11, 15))}
    ca = {(call.sigma, call.size) for call in calls if call.block == 4}
    assert ca == {(14.0, (3, 4)), (8.0, (6, 8)), (4.0, (11, 15)), (1.0, (11, 15))}
    assert {(sigma, done) for _, sigma, done in msw_calls} == {(14.0, False), (8.0, False), (4.0, True), (1.0, True)}
    assert sum(1 for call in calls if call.block == 3 and call.sigma == 8.0) == 2  # both visits of sigma 8
    assert torch.equal(first, run(recording))  # no state left from the first run
    assert torch.equal(first, run(patched))
    assert different(first, run(model))


RESTART_SEGMENTS = "[2,1,0.5,6.0]"
"""Restart sampling's segment syntax [restarts, steps, sigma min, sigma max]: twice from sigma
0.5 back up to 6, into RAU-Net's range again (RAD until 40 %: sigma 2.9 on the tiny models)."""


@compat(
    SAMPLERS,
    "KRestartSamplerSimple from ComfyUI_restart_sampling (the real pack)",
    "works",
    "Each call is gated by its own sigma, so a restart back into RAU-Net's range runs RAU-Net again; the seed "
    "recommends restart segments that start after RAU-Net ends (the a1111 preset does).",
)
def test_restart_sampling(pack):
    load_third_party("ComfyUI_restart_sampling")
    model = tiny_model("sd15")
    size = (21, 29)
    restart = ("KRestartSamplerSimple", {**KSAMPLER[1], "steps": 6, "segments": RESTART_SEGMENTS})
    result, calls, msw_calls = through_executor(model, ours_in_a_graph(), restart, size, record=True)
    assert torch.isfinite(result).all()
    check_gating(model, calls, msw_calls, *size)
    rad_until = to_sigma(model)(RAD_END)
    on = [call.sigma >= rad_until for call in calls if call.block == 3]
    assert any(not before and after for before, after in zip(on, on[1:]))  # RAD came back with a restart
    assert torch.equal(result, through_executor(model, ours_in_a_graph(), restart, size)[0])
    plain = ("KSampler", {**KSAMPLER[1], "steps": 6})
    assert different(result, through_executor(model, ours_in_a_graph(), plain, size)[0])  # the restarts acted
    assert different(result, through_executor(model, [], restart, size)[0])  # HiDiffusion acted
