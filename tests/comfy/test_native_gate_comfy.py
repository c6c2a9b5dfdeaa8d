"""The auto node's native-size gate holds per UNet call (issue: one patched model serving a
native-size pass). The model it returns, set up for 3x the side, runs every call at or below
the native size exactly as the unpatched model, and every call above it exactly as before
(the advanced nodes with the logged settings, no gate)."""

from __future__ import annotations

import logging

import pytest
import torch
from harness import (
    conditioning,
    control_hint,
    pack_module,
    sample,
    sharp_attention_model,
    tiny_controlnet,
    tiny_model,
)

NATIVE_PX = 128
"""A native size small enough for the tiny models to sample at 3x quickly (latent side 16)."""
NATIVE = NATIVE_PX // 8
ADVANCED = f"native_resolution: {NATIVE_PX}"
GATE_MESSAGE = "runs exactly as the unpatched model"


def auto_for(pack, family: str, model=None):
    """The auto node's model for 3x the native side (``model``: else the tiny one)."""
    side = NATIVE_PX * 3
    model = tiny_model(family) if model is None else model
    node = pack["ApplyHiDiffusion"]
    return node.execute(model=model, width=side, height=side, raunet=True, msw_msa=True, advanced=ADVANCED).result[0]


def ungated_for(family: str, model=None):
    """What the auto node returned before the per-call gate: the advanced nodes' own code with
    the plan's settings, active at every size it is sampled at."""
    auto = pack_module("hidiff.comfyui.auto_nodes")
    raunet, msw_msa = pack_module("hidiff.comfyui.raunet"), pack_module("hidiff.comfyui.msw_msa")
    side = NATIVE_PX * 3
    model = tiny_model(family) if model is None else model
    plan, _ = auto.make_plan(model, side, side, None, ADVANCED)
    assert plan.active
    return msw_msa.apply_msw_msa(raunet.apply_raunet(model, plan.raunet_settings()), plan.msw_settings())


def gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize(("height", "width"), [(NATIVE, NATIVE), (NATIVE - 4, NATIVE), (NATIVE, 9)])
def test_calls_at_or_below_native_are_unpatched(pack, family, height, width):
    unpatched = sample(tiny_model(family), family, height, width, seed=5)
    gated = sample(auto_for(pack, family), family, height, width, seed=5)
    ungated = sample(ungated_for(family), family, height, width, seed=5)
    assert torch.equal(gated, unpatched)
    assert gap(ungated, unpatched) > 1e-3, "without the gate the patched model must change this call"


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize(("height", "width"), [(3 * NATIVE, 3 * NATIVE), (NATIVE, NATIVE + 8)])
def test_calls_above_native_are_unchanged(pack, family, height, width):
    """Above the native size (3x, and a wide call whose height is native) the gate changes nothing."""
    gated = sample(auto_for(pack, family), family, height, width, seed=5)
    ungated = sample(ungated_for(family), family, height, width, seed=5)
    unpatched = sample(tiny_model(family), family, height, width, seed=5)
    assert torch.equal(gated, ungated)
    assert gap(gated, unpatched) > 1e-3, "HiDiffusion must change a call above the native size"


def test_tiled_img2img_at_native_tiles_is_unpatched(pack):
    """A tiled upscaler's pass: img2img on a native-size tile of a 3x latent, at a denoise
    that starts inside RAD's range (sharp attention, so MSW-MSA shows too)."""
    import comfy.sample

    model = sharp_attention_model("sd15")
    big = sample(model, "sd15", 3 * NATIVE, 3 * NATIVE, seed=2)
    tile = big[:, :, NATIVE : 2 * NATIVE, :NATIVE].clone()
    before = tile.clone()
    noise = comfy.sample.prepare_noise(tile, 9)
    positive, negative = conditioning("sd15", seed=11), conditioning("sd15", seed=12)

    def img2img(model):
        return comfy.sample.sample(
            model, noise, 4, 5.0, "euler", "normal", positive, negative, tile, denoise=0.75, seed=9, disable_pbar=True
        )

    unpatched, gated = img2img(model), img2img(auto_for(pack, "sd15", model))
    ungated = img2img(ungated_for("sd15", model))
    assert torch.equal(gated, unpatched)
    assert gap(ungated, unpatched) > 1e-3
    assert torch.equal(tile, before)


def test_controlnet_at_native_is_unpatched(pack):
    """The ControlNet bridge hands a gated call on: ComfyUI adds the residuals itself."""
    control = tiny_controlnet("sd15").copy().set_cond_hint(control_hint(NATIVE, NATIVE), 1.0, (0.0, 1.0))
    unpatched = sample(tiny_model("sd15"), "sd15", NATIVE, NATIVE, seed=4, control=control)
    gated = sample(auto_for(pack, "sd15"), "sd15", NATIVE, NATIVE, seed=4, control=control)
    ungated = sample(ungated_for("sd15"), "sd15", NATIVE, NATIVE, seed=4, control=control)
    assert torch.equal(gated, unpatched)
    assert gap(ungated, unpatched) > 1e-3


def test_the_run_is_told_once(pack, logs):
    sample(auto_for(pack, "sd15"), "sd15", NATIVE, NATIVE, seed=1, steps=4)
    told = [m for m in logs.messages(logging.INFO) if GATE_MESSAGE in m]
    assert len(told) == 1 and f"native {NATIVE_PX}px" in told[0], told
    sample(auto_for(pack, "sd15"), "sd15", 3 * NATIVE, 3 * NATIVE, seed=1, steps=2)
    assert len([m for m in logs.messages(logging.INFO) if GATE_MESSAGE in m]) == 1, "a 3x run is not gated"
    sample(auto_for(pack, "sd15"), "sd15", NATIVE, NATIVE, seed=1, steps=2)
    assert len([m for m in logs.messages(logging.INFO) if GATE_MESSAGE in m]) == 2, "once per run"


def test_advanced_nodes_have_no_gate(pack):
    """The seed-compatible nodes keep the seed's behaviour: active at the native size too."""
    ungated = ungated_for("sd15")
    assert pack_module("hidiff.comfyui.run_state").run_wrapper(ungated).native_latent is None
    assert pack_module("hidiff.comfyui.run_state").run_wrapper(auto_for(pack, "sd15")).native_latent == NATIVE
