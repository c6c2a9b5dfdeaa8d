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


def test_the_sigma_reader_reads_each_tensor_once(rs, monkeypatch):
    reads = []
    current = rs.current_sigma
    monkeypatch.setattr(rs, "current_sigma", lambda sigmas: reads.append(sigmas) or current(sigmas))
    reader = rs.SigmaReader()
    first = torch.tensor([3.0, 2.0])
    assert reader(first) == 3.0 and reader(first) == 3.0 and len(reads) == 1
    same_values = torch.tensor([3.0, 2.0])  # another call at the same sigma: read again
    assert reader(same_values) == 3.0 and len(reads) == 2
    assert reader(torch.tensor([1.5])) == 1.5 and len(reads) == 3
    assert reader(None) is None and reader(0.5) == 0.5  # no tensor: nothing to keep
    assert reader(same_values) == 3.0 and len(reads) == 6  # the last tensor is still the one kept
    assert reader(same_values) == 3.0 and len(reads) == 6


@pytest.mark.parametrize("with_control", [False, True], ids=["plain", "controlnet"])
def test_the_sigma_is_read_once_per_unet_call_with_msw_msa_and_raunet(pack, monkeypatch, with_control):
    """MSW-MSA's attention patch, RAD, the CA downscale (with a fadeout), the middle-block
    guard and the ControlNet bridge all need each call's sigma; reading it is a GPU sync, so
    one run reads it once per UNet call for all of them."""
    from comfy.patcher_extension import WrappersMP

    raunet = apply_raunet(pack, tiny_model("sd15"), "ca_fadeout_start_time: 0.2", end_time=1.0, ca_end_time=0.6)
    model = apply_msw(pack, raunet)
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
