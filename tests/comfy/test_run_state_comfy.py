"""The per-run state inside real ComfyUI: one read of the sigma per UNet call for every effect."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from harness import control_hint, pack_module, sample, tiny_controlnet, tiny_model
from test_msw_msa_comfy import apply_msw
from test_raunet_comfy import apply as apply_raunet

SIGMA_MODULES = (
    "hidiff.comfyui.run_state",
    "hidiff.comfyui.msw_msa",
    "hidiff.comfyui.raunet",
    "hidiff.comfyui.controlnet",
)
"""Every pack module that reads the sigma of a model call (through ``current_sigma``)."""


@pytest.fixture(scope="module")
def rs():
    return pack_module("hidiff.comfyui.run_state")


def patched_with_everything(pack):
    """RAU-Net (with the CA fadeout and the ControlNet bridge), then MSW-MSA, on a tiny SD1.5 UNet."""
    raunet = apply_raunet(pack, tiny_model("sd15"), "ca_fadeout_start_time: 0.2", end_time=1.0, ca_end_time=0.6)
    return apply_msw(pack, raunet)


def test_one_run_holder_and_one_sigma_wrapper_for_every_effect(pack, rs):
    """RAU-Net, its ControlNet bridge and MSW-MSA register one OUTER_SAMPLE and one
    DIFFUSION_MODEL wrapper between them, under the pack's key; every patch of a run finds
    the same run, with a state per effect, and nothing is left after it."""
    from comfy.patcher_extension import WrappersMP

    model = patched_with_everything(pack)
    outer = model.wrappers[WrappersMP.OUTER_SAMPLE]
    assert list(outer) == [rs.PACK] and len(outer[rs.PACK]) == 1
    assert len(model.get_wrappers(WrappersMP.DIFFUSION_MODEL, rs.PACK)) == 1
    effects = [effect for effect, _ in rs.run_wrapper(model).checks]
    assert effects == ["hidiffusion_controlnet", "hidiffusion_raunet", "hidiffusion_msw_msa"]
    runs, sigmas = [], []

    def spy(q, k, v, extra_options):
        runs.append(extra_options[rs.PACK])
        sigmas.append(extra_options[rs.SIGMA_KEY])
        return q, k, v

    spied = model.clone()
    spied.set_model_attn1_patch(spy)
    sample(spied, "sd15", 24, 40, steps=3)
    run = runs[0]
    assert all(r is run for r in runs) and isinstance(run, rs.PackRun)
    assert sorted(run.effects) == sorted(effects) and run.seed == 0 and len(run.schedule) == 4
    assert sigmas[0] == run.schedule[0] and all(isinstance(s, float) for s in sigmas)
    assert rs.PACK not in spied.model_options["transformer_options"]
    sample(spied, "sd15", 24, 40, steps=3)
    assert runs[-1] is not run  # each run its own holder


def test_reapplying_an_effect_keeps_one_registration(pack, rs):
    model = apply_msw(pack, apply_msw(pack, patched_with_everything(pack)))
    effects = [effect for effect, _ in rs.run_wrapper(model).checks]
    assert effects == ["hidiffusion_controlnet", "hidiffusion_raunet", "hidiffusion_msw_msa"]
    assert rs.run_wrapper(model).check_of("hidiffusion_raunet") is not None


def test_the_fadeout_is_worked_out_once_per_sigma(pack, monkeypatch):
    """The CA fadeout turns a sigma into sampling percent by a 48-step bisection; a run
    does it once per sigma it meets (a step's, or one a second-order sampler calls the
    model at), not in every call that needs it."""
    raunet_module = pack_module("hidiff.comfyui.raunet")
    model = patched_with_everything(pack)
    asked: list[float] = []
    worked_out: list[float] = []
    fadeout, ca = raunet_module.Fadeout, raunet_module.CaDownscale
    strength, factors_at = fadeout.strength, ca.factors_at
    monkeypatch.setattr(fadeout, "strength", lambda self, s: worked_out.append(s) or strength(self, s))
    monkeypatch.setattr(ca, "factors_at", lambda self, s, *state: asked.append(s) or factors_at(self, s, *state))
    result = sample(model, "sd15", 24, 40, steps=8, sampler="heun")
    assert len(asked) > len(set(asked)) >= 3, "the test needs calls that share a sigma"
    assert sorted(worked_out) == sorted(set(asked)), "each sigma's fadeout must be worked out exactly once"
    monkeypatch.undo()
    assert torch.equal(result, sample(model, "sd15", 24, 40, steps=8, sampler="heun"))


@pytest.mark.parametrize("with_control", [False, True], ids=["plain", "controlnet"])
def test_the_sigma_is_read_once_per_unet_call_with_msw_msa_and_raunet(pack, monkeypatch, with_control):
    """MSW-MSA's attention patch, RAD, the CA downscale (with a fadeout), the middle-block
    guard and the ControlNet bridge all need each call's sigma; reading it is a GPU sync, so
    one run reads it once per UNet call for all of them."""
    from comfy.patcher_extension import WrappersMP

    model = patched_with_everything(pack)
    calls: list[int] = []
    reads: list[int] = []

    def count_call(executor, *args, **kwargs):
        calls.append(len(calls) + 1)
        return executor(*args, **kwargs)

    counted = model.clone()
    # APPLY_MODEL wraps the whole UNet call, the ControlNet bridge's DIFFUSION_MODEL wrapper included
    counted.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "test_count", count_call)
    for name in SIGMA_MODULES:
        module = pack_module(name)
        if hasattr(module, "current_sigma"):
            original = module.current_sigma

            def counting(sigmas, original=original):
                if isinstance(sigmas, torch.Tensor):
                    reads.append(len(calls))  # the UNet call it happens in (0: outside any)
                return original(sigmas)

            monkeypatch.setattr(module, "current_sigma", counting)
    control = None
    if with_control:
        control = tiny_controlnet("sd15").copy().set_cond_hint(control_hint(24, 40), 1.0, (0.0, 1.0))
    result = sample(counted, "sd15", 24, 40, steps=3, control=control)
    assert torch.isfinite(result).all()
    assert len(calls) >= 3 and reads
    per_call = Counter(reads)
    assert 0 not in per_call
    assert max(per_call.values()) == 1, f"sigma read more than once in a UNet call: {per_call}"
    assert len(per_call) == len(calls)  # each call's sigmas tensor is new, and MSW-MSA reads it in every call
    monkeypatch.undo()
    assert torch.equal(result, sample(model, "sd15", 24, 40, steps=3, control=control))
