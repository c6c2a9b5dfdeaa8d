"""ComfyUI-bleh integration (a seed feature): with the real bleh pack loaded by ComfyUI's
loader, the RAU-Net nodes offer its resampling methods and run them through bleh's own
``scale_samples``; its random modes draw from our run's seeded generators and leave the
global RNG as it was; the seed's workflow saved with those modes passes ComfyUI's validation
and samples. Without bleh nothing changes.

The bleh half runs in a process of its own (``bleh_worker.py``): loading bleh changes a
process for good (sampler presets, a reloaded ``comfy.k_diffusion.sampling``, its entry in
``sys.modules``), and no other test may see that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import bleh_folder, comfyui_path, pack_module, third_party_pack, tiny_model

WORKER = Path(__file__).with_name("bleh_worker.py")
TOL = 1e-5
OURS = ("bicubic", "bislerp", "bilinear", "nearest-exact", "nearest", "area")
SEED_README_MODES = ("random", "random+renoise1", "hslerp", "revbislerp", "bislerp+renoise1")
"""Methods the seed README names for bleh users (``random``, ``random+renoise1``, the
bislerp/hslerp variants)."""


@pytest.fixture(scope="module")
def findings() -> dict:
    third_party_pack(bleh_folder())
    env = {**os.environ, "COMFYUI_PATH": str(comfyui_path())}
    done = subprocess.run(
        [sys.executable, str(WORKER)], capture_output=True, text=True, timeout=900, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bleh_methods_are_offered_once_bleh_is_loaded(findings):
    assert not findings["bleh_before"] and findings["bleh_after"]  # ours was loaded first
    lists = findings["lists"]
    upscale = lists["upscale_mode"]
    assert tuple(upscale[: len(OURS)]) == OURS  # ours first, in the seed's order
    assert set(SEED_README_MODES) <= set(upscale)
    assert len(upscale) > len(OURS) + 100
    assert lists["ca_upscale_mode"] == upscale
    assert lists["two_stage_upscale_mode"] == ["disabled", *upscale]
    assert lists["simple_upscale_mode"] == ["default", *upscale]
    downscale = lists["ca_downscale_mode"]
    assert downscale[:2] == ["avg_pool2d", "adaptive_avg_pool2d"] and set(SEED_README_MODES) <= set(downscale)


def test_every_offered_method_resizes_to_the_exact_size(findings):
    """bleh's list holds blend modes that fail on a resize and pools that round the wrong way:
    none of them may be offered."""
    assert findings["wrong_sizes"] == {}


def test_a_bleh_method_runs_blehs_own_scale_samples(findings):
    reference = findings["reference"]
    assert reference["error"] <= TOL
    assert reference["reference_to_bicubic"] >= 10 * TOL  # the reference is not what bicubic gives


def test_seed_workflow_saved_with_random_modes_passes_comfyui_validation(findings):
    workflow = findings["workflow"]
    assert workflow["valid"], (workflow["error"], workflow["nodes"])
    assert workflow["inputs"]["upscale_mode"] == "random+renoise1" and workflow["inputs"]["ca_upscale_mode"] == "random"


def test_random_modes_draw_from_the_runs_seeded_generator(findings):
    result = findings["sampling"]
    assert result["finite"]
    assert result["global_rng_as_with_bicubic"]  # the global RNG moved exactly as without bleh's draws
    assert result["same_with_another_global_state"] == 0.0  # same seed, same image, whatever the global RNG
    assert result["random_to_bicubic"] > 1e-2 and result["seed1_random_to_bicubic"] > 1e-2  # the modes acted


# --- without bleh (this process never loads it) --------------------------------------------


def test_without_bleh_nothing_changes(pack):
    resampling = pack_module("hidiff.comfyui.resampling")
    core = pack_module("hidiff.core.raunet")
    assert resampling.bleh() is None
    assert resampling.upscale_methods() == core.UPSCALE_METHODS == OURS
    assert resampling.two_stage_modes() == core.TWO_STAGE_MODES
    assert resampling.ca_downscale_methods() == core.CA_DOWNSCALE_METHODS
    options = pack["ApplyRAUNet"].INPUT_TYPES()["required"]["upscale_mode"]
    assert tuple(options[1]["options"] if isinstance(options[0], str) else options[0]) == OURS


def test_without_bleh_a_bleh_method_is_a_clear_error_before_sampling(pack):
    message = pack["ApplyRAUNet"].validate_inputs(**{**defaults(pack), "upscale_mode": "random"})
    assert isinstance(message, str) and "upscale_mode" in message and "'random'" in message and "bicubic" in message
    with pytest.raises(ValueError, match="upscale_mode"):
        pack["ApplyRAUNet"].execute(tiny_model("sd15"), **{**defaults(pack), "upscale_mode": "random"})
    resampling = pack_module("hidiff.comfyui.resampling")
    core = pack_module("hidiff.core.raunet")
    import torch

    with pytest.raises(core.ResizeError, match="needs ComfyUI-bleh"):
        resampling.CallResampler({}, "x")(torch.zeros(1, 4, 2, 2), 4, 4, "random")


def defaults(pack) -> dict:
    settings = pack_module("hidiff.comfyui.raunet_settings")
    names = pack["ApplyRAUNet"].INPUT_TYPES()["required"]
    return {name: settings.DEFAULTS[name] for name in names if name != "model"}
