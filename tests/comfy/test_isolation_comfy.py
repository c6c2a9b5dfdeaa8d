"""Nothing a user had is changed: every node, checked with a whole-state snapshot.

Around ``execute()``: the input model's whole configuration (model_options with its
wrappers, callbacks, patches and transformer_options; object patches; attachments; weight
patches; hooks), a hash of its weights, and every RNG in the process (torch, ``random``,
numpy) are as before, with no reseeding in between. Around sampling: the input and the
patched model are as before, and the RNG ends where an unpatched run leaves it. See
``tests/snapshot.py`` for what each part of the snapshot catches.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import snapshot
import torch
from harness import fresh_model, sample
from node_settings import MSW_SDXL, RAUNET_SDXL

RAUNET = dict(RAUNET_SDXL, ca_end_time=0.6)
MSW = dict(MSW_SDXL)
NODES = {
    "ApplyRAUNet": RAUNET,
    "ApplyRAUNetSimple": {
        "model_type": "SDXL",
        "res_mode": "ultra (over 2048)",
        "upscale_mode": "default",
        "ca_upscale_mode": "default",
    },
    "ApplyMSWMSAAttention": MSW,
    "ApplyMSWMSAAttentionSimple": {"model_type": "SDXL"},
    "ApplyHiDiffusion": {
        "width": 2048,
        "height": 2048,
        "raunet": True,
        "msw_msa": True,
        # the sampled 32x24 latent must be above the native size, which the model gates per call
        "advanced": "verbose: true\nnative_resolution: 128",
    },
    "HiDiffusionInspect": {"width": 2048, "height": 2048},
}
"""All six nodes, with inputs under which each one patches (or reports) something."""
PATCHING = [name for name in NODES if name != "HiDiffusionInspect"]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def run(pack, name: str, model):
    return pack[name].execute(model=model, **NODES[name]).result[0]


@pytest.mark.parametrize("name", list(NODES))
def test_execute_changes_nothing_the_user_had(pack, name):
    model = fresh_model("sdxl")
    seed_everything(3)
    before = snapshot.of_patcher(model)
    output = run(pack, name, model)
    after = snapshot.of_patcher(model)
    assert before.differences(after) == []
    if name in PATCHING:
        assert output is not model and snapshot.of_patcher(output, rng=False).fields != before.fields


@pytest.mark.parametrize("name", PATCHING)
def test_sampling_changes_nothing_and_draws_nothing(pack, name):
    """The patched model samples differently, yet the run leaves both models and every
    generator exactly as an unpatched run would."""
    model = fresh_model("sdxl")
    patched = run(pack, name, model)
    input_before, patched_before = snapshot.of_patcher(model, rng=False), snapshot.of_patcher(patched, rng=False)
    seed_everything(11)
    plain = sample(model, "sdxl", 32, 24, seed=2, steps=2)
    rng_after_plain = snapshot.rng_state()
    seed_everything(11)
    result = sample(patched, "sdxl", 32, 24, seed=2, steps=2)
    assert snapshot.rng_state() == rng_after_plain
    assert not torch.equal(result, plain)
    assert input_before.differences(snapshot.of_patcher(model, rng=False)) == []
    assert patched_before.differences(snapshot.of_patcher(patched, rng=False)) == []
    assert torch.equal(plain, sample(model, "sdxl", 32, 24, seed=2, steps=2))


def draw_from_the_global_generators(model) -> None:
    random.random()
    np.random.rand()


def test_the_snapshot_sees_what_a_careless_node_would_change():
    """The snapshot is not blind: each way a node could leak into the model it got shows."""
    leaks = {
        "model_options": lambda model: model.set_model_unet_function_wrapper(lambda apply, args: apply(**args)),
        "object_patches": lambda model: model.add_object_patch("diffusion_model.out", torch.nn.Identity()),
        "patches": lambda model: model.add_patches({"diffusion_model.out.2.bias": (torch.zeros(4),)}),
        "callbacks": lambda model: model.add_callback_with_key("on_cleanup", "leak", lambda *_: None),
        "wrappers": lambda model: model.add_wrapper_with_key("outer_sample", "leak", lambda executor, *a: executor(*a)),
        "attachments": lambda model: model.set_attachments("leak", object()),
        "rng": draw_from_the_global_generators,
    }
    for field, leak in leaks.items():
        model = fresh_model("sdxl")
        before = snapshot.of_patcher(model)
        leak(model)
        assert before.differences(snapshot.of_patcher(model)) == [field], field
    model = fresh_model("sdxl")
    before = snapshot.of_patcher(model)
    patches = model.model_options.setdefault("transformer_options", {}).setdefault("patches", {})
    after_setdefault = snapshot.of_patcher(model)
    patches.setdefault("input_block_patch", []).append(lambda h, options: h)  # in place, deep inside
    assert "model_options" in after_setdefault.differences(snapshot.of_patcher(model))
    with torch.no_grad():
        model = fresh_model("sdxl")
        before = snapshot.of_patcher(model)
        next(model.model.parameters()).mul_(1.0)  # an in-place write of the same values: the hash stays
        assert before.differences(snapshot.of_patcher(model)) == []
        next(model.model.parameters()).view(-1)[0].add_(1e-3)
        assert before.differences(snapshot.of_patcher(model)) == ["weights"]
