"""MSW-MSA nodes inside real ComfyUI, on tiny SD1.5- and SDXL-layout UNets."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import comfy.samplers
import pytest
import torch
from harness import (
    REPO_ROOT,
    assert_matches_a_decisive_reference,
    pack_module,
    sample,
    sharp_attention_model,
    tiny_model,
    widget_inputs,
)
from node_settings import MSW_SD15
from reference import naive_windowed

SEED_WORKFLOWS = REPO_ROOT / "tests" / "data" / "seed_workflows"
SEED_MSW_INPUTS = ["input_blocks", "middle_blocks", "output_blocks", "time_mode", "start_time", "end_time"]
PRESET_BLOCKS = {"sd15": ("1,2", "9,10,11"), "sdxl": ("4,5", "3,4,5")}


def apply_msw(pack, model, inputs=None, yaml_parameters=None, **overrides):
    values = dict(MSW_SD15)
    values.update(inputs or {})
    values.update(overrides)
    return pack["ApplyMSWMSAAttention"].execute(model=model, yaml_parameters=yaml_parameters, **values).result[0]


def replaces_of(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


def record_layouts(model):
    """Wrap the MSW-MSA patch of ``model`` so every call's block, sigma and layout is recorded."""
    records = []
    recorded = model.clone()
    for key, patch in list(replaces_of(model).items()):

        def recorder(q, k, v, extra_options, patch=patch):
            layout = patch.layout_for(q, k, v, extra_options)
            records.append(
                (
                    tuple(extra_options["block"]),
                    extra_options.get("block_index", 0),
                    float(extra_options["sigmas"].max()),
                    layout,
                )
            )
            return patch(q, k, v, extra_options)

        recorded.set_model_attn1_replace(recorder, *key)
    return recorded, records


def schedule(model, steps: int) -> list[float]:
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    return [float(s) for s in sigmas]


# --- loading -------------------------------------------------------------------------


def test_pack_registers_the_seed_nodes_with_the_seed_input_order(pack):
    info = pack["ApplyMSWMSAAttention"].GET_NODE_INFO_V1()
    assert list(info["input"]["required"]) == ["model", *SEED_MSW_INPUTS]
    assert list(info["input"]["optional"]) == ["yaml_parameters"]
    simple = pack["ApplyMSWMSAAttentionSimple"].GET_NODE_INFO_V1()
    assert list(simple["input"]["required"]) == ["model_type", "model"]
    assert simple["input"]["required"]["model_type"][1]["options"] == ["auto", "SD15", "SDXL"]
    for spec in (*info["input"]["required"].values(), *simple["input"]["required"].values()):
        assert spec[1].get("tooltip")


@pytest.mark.parametrize(
    ("family", "widgets"),
    [
        ("sd15", ["1,2", "", "9,10,11", "percent", 0, 1]),
        ("sd15", ["0,1", "", "9,10,11", "percent", 0, 1]),  # the seed's old default: input 0 has no attention
        ("sdxl", ["4,5", "", "4,5", "percent", 0, 1]),  # the seed's SDXL example workflow
    ],
)
def test_seed_widget_values_load_and_sample(pack, logs, family, widgets):
    inputs = widget_inputs(pack["ApplyMSWMSAAttention"], widgets)
    assert list(inputs) == SEED_MSW_INPUTS
    model = tiny_model(family)
    patched = apply_msw(pack, model, inputs)
    result = sample(patched, family, 24, 40, steps=2)
    assert torch.isfinite(result).all()
    assert not torch.equal(result, sample(model, family, 24, 40, steps=2))
    if widgets[0] == "0,1":
        warning = [m for m in logs.messages() if "input_blocks 0 have no self-attention" in m]
        assert warning and "valid input_blocks: 1,2,4,5,7,8" in warning[0]


def test_seed_example_workflow_files_use_these_widgets(pack):
    assert len(list(SEED_WORKFLOWS.glob("*.json"))) == 2
    found = 0
    for path in SEED_WORKFLOWS.glob("*.json"):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "ApplyMSWMSAAttention":
                found += 1
                assert (
                    pack["ApplyMSWMSAAttention"].validate_inputs(
                        **widget_inputs(pack["ApplyMSWMSAAttention"], node["widgets_values"])
                    )
                    is True
                )
    assert found == 2


# --- the effect is the method ---------------------------------------------------------


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_output_equals_naive_windowed_reference_at_odd_non_square_size(pack, family):
    """Odd, non-square latent (37x53), batch 2, CFG: the patched model samples exactly like a
    model whose attention is the naive per-window reference (shift fixed at 0)."""
    model = sharp_attention_model(family)
    inputs = dict(zip(("input_blocks", "output_blocks"), PRESET_BLOCKS[family]))
    patched = apply_msw(pack, model, inputs, yaml_parameters="shift_mode: none")

    def reference(q, k, v, extra_options):
        _, _, height, width = extra_options["activations_shape"]
        return naive_windowed(q, k, v, height, width, 0, heads=extra_options["n_heads"])

    expected_model = model.clone()
    for key in replaces_of(patched):
        expected_model.set_model_attn1_replace(reference, *key)
    result = sample(patched, family, 37, 53, steps=2, batch=2)
    expected = sample(expected_model, family, 37, 53, steps=2, batch=2)
    unpatched = sample(model, family, 37, 53, steps=2, batch=2)
    assert_matches_a_decisive_reference(result, expected, unpatched, atol=1e-4)


def test_windows_follow_the_exact_token_grid(pack):
    patched, records = record_layouts(apply_msw(pack, tiny_model("sd15")))
    sample(patched, "sd15", 37, 53, steps=2)
    grids = {(r[0], (r[3].height, r[3].width)) for r in records}
    assert grids == {(("input", 1), (37, 53)), (("input", 2), (37, 53))} | {
        (("output", i), (37, 53)) for i in (9, 10, 11)
    }
    for *_, layout in records:
        assert (layout.window_h, layout.window_w) == (19, 27)
        assert layout.shift_h in {0, 4, 8, 12} and layout.shift_w == 6 * (layout.shift_h // 4)


def shifts_by_block(records, sigmas):
    """{block: [shift of each step]}, checking all calls of a step agree."""
    per_step: dict = {}
    for block, block_index, sigma, layout in records:
        step = min(range(len(sigmas) - 1), key=lambda i: abs(sigmas[i] - sigma))
        per_step.setdefault((block, block_index), {}).setdefault(step, set()).add(layout.shift_h)
    for steps in per_step.values():
        assert all(len(s) == 1 for s in steps.values()), "cond and uncond of one step must share windows"
    return {block: [next(iter(steps[i])) for i in sorted(steps)] for block, steps in per_step.items()}


def test_shifts_move_every_step_follow_the_seed_and_leave_global_rng_alone(pack):
    model = tiny_model("sdxl")
    patched, records = record_layouts(apply_msw(pack, model, {"input_blocks": "4,5", "output_blocks": "3,4,5"}))
    sigmas = schedule(model, 6)
    # ComfyUI itself reseeds the global RNG when it makes the noise; the effect must not
    # draw from it on top of that.
    sample(model, "sdxl", 32, 32, steps=6, seed=1)
    rng_unpatched = torch.get_rng_state()
    sample(patched, "sdxl", 32, 32, steps=6, seed=1)
    assert torch.equal(rng_unpatched, torch.get_rng_state())
    first = shifts_by_block(records, sigmas)
    assert len(first) == 10  # SDXL: 5 blocks x 2 transformer layers, each with its own sequence
    for shifts in first.values():
        assert len(shifts) == 6 and all(a != b for a, b in zip(shifts, shifts[1:]))
    records.clear()
    sample(patched, "sdxl", 32, 32, steps=6, seed=1)
    assert shifts_by_block(records, sigmas) == first
    records.clear()
    sample(patched, "sdxl", 32, 32, steps=6, seed=2)
    assert shifts_by_block(records, sigmas) != first


def test_same_seed_same_image_and_input_model_untouched(pack):
    model = tiny_model("sd15")
    before = sample(model, "sd15", 24, 32, seed=3)
    options_before = repr(model.model_options)
    patched = apply_msw(pack, model)
    first = sample(patched, "sd15", 24, 32, seed=3)
    assert torch.equal(first, sample(patched, "sd15", 24, 32, seed=3))
    assert torch.equal(before, sample(model, "sd15", 24, 32, seed=3))
    assert repr(model.model_options) == options_before
    assert not replaces_of(model)


CROSS_PROCESS_SCRIPT = """
import hashlib, sys
sys.path[:0] = [{comfy_tests!r}, {tests!r}]
from harness import import_comfyui, load_pack, sample, tiny_model
import_comfyui()
pack = load_pack()
model = pack["ApplyMSWMSAAttention"].execute(model=tiny_model("sd15"), input_blocks="1,2", middle_blocks="",
    output_blocks="9,10,11", time_mode="percent", start_time=0.0, end_time=1.0).result[0]
result = sample(model, "sd15", 24, 32, seed=5, steps=3)
print("DIGEST", hashlib.sha256(result.numpy().tobytes()).hexdigest())
"""


def test_same_image_in_another_process(pack):
    here = sample(apply_msw(pack, tiny_model("sd15")), "sd15", 24, 32, seed=5, steps=3)
    script = CROSS_PROCESS_SCRIPT.format(comfy_tests=str(Path(__file__).parent), tests=str(REPO_ROOT / "tests"))
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    digest = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("DIGEST"))
    assert digest == hashlib.sha256(here.numpy().tobytes()).hexdigest()


# --- time gating ----------------------------------------------------------------------


def active_steps(records, sigmas):
    active = {min(range(len(sigmas) - 1), key=lambda i: abs(sigmas[i] - r[2])) for r in records if r[3] is not None}
    seen = {min(range(len(sigmas) - 1), key=lambda i: abs(sigmas[i] - r[2])) for r in records}
    assert seen == set(range(len(sigmas) - 1))
    return sorted(active)


def test_percent_is_sampling_percent_of_the_model(pack):
    model = tiny_model("sd15")
    sigmas = schedule(model, 4)
    bound = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    patched, records = record_layouts(apply_msw(pack, model, start_time=0.5, end_time=1.0))
    sample(patched, "sd15", 16, 16, steps=4)
    assert active_steps(records, sigmas) == [i for i in range(4) if sigmas[i] <= bound]
    assert 0 < len(active_steps(records, sigmas)) < 4


def test_sigma_bounds_are_inclusive(pack):
    model = tiny_model("sd15")
    sigmas = schedule(model, 4)
    patched, records = record_layouts(
        apply_msw(pack, model, time_mode="sigma", start_time=sigmas[1], end_time=sigmas[2])
    )
    sample(patched, "sd15", 16, 16, steps=4)
    assert active_steps(records, sigmas) == [1, 2]


def test_timestep_mode_counts_down_from_999(pack):
    model = tiny_model("sd15")
    sigmas = schedule(model, 4)
    patched, records = record_layouts(apply_msw(pack, model, time_mode="timestep", start_time=999, end_time=500))
    sample(patched, "sd15", 16, 16, steps=4)
    bound = model.get_model_object("model_sampling").percent_to_sigma(1 - 500 / 999)
    assert active_steps(records, sigmas) == [i for i in range(4) if sigmas[i] >= bound]


def test_start_at_the_end_switches_the_effect_off(pack):
    model = tiny_model("sd15")
    patched = apply_msw(pack, model, start_time=1.0, end_time=0.3)
    assert torch.equal(sample(patched, "sd15", 16, 16), sample(model, "sd15", 16, 16))


# --- bad input ------------------------------------------------------------------------

BAD_INPUTS = [
    ({"input_blocks": "1,x"}, "input_blocks = '1,x' contains 'x'"),
    ({"output_blocks": "9,,10"}, "output_blocks = '9,,10' contains an empty item"),
    ({"middle_blocks": "-1"}, "middle_blocks = '-1' contains '-1'"),
    ({"start_time": 0.8, "end_time": 0.2}, "start_time = 0.8 comes after end_time = 0.2"),
    ({"end_time": 1.5}, "end_time = 1.5 is out of range: in percent mode it must be 0 to 1"),
    ({"start_time": -1.0}, "start_time = -1 is out of range"),
    ({"time_mode": "sigma", "start_time": 1.0, "end_time": 2.0}, "comes after"),
    ({"yaml_parameters": "- 1\n- 2"}, "yaml_parameters must be a YAML mapping"),
    ({"yaml_parameters": "start_time: [0"}, "yaml_parameters is not valid YAML"),
    ({"yaml_parameters": "window_size: 4"}, "unknown key(s) window_size. Valid keys:"),
    (
        {"yaml_parameters": "shift_mode: sometimes"},
        "shift_mode = 'sometimes' is not valid; use one of distinct, independent, none",
    ),
    ({"yaml_parameters": "input_blocks: [1, a]"}, "input_blocks = [1, 'a'] contains 'a'"),
    (
        {"yaml_parameters": "window_grid: 1x1"},
        "yaml_parameters: window_grid must be 2x2 (the official method), native, or RxC windows such as 4x4",
    ),
    ({"yaml_parameters": "window_grid: 3"}, "got 3"),
    ({"yaml_parameters": "window_grid: 65x2"}, "1 to 64 a side"),
    ({"yaml_parameters": "native_resolution: 10"}, "native_resolution must be a whole number of pixels"),
]


def validation_errors(widgets: dict) -> list[str]:
    import execution

    inputs = {"model": ["1", 0], **MSW_SD15, **widgets}
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "none.safetensors"}},
        "2": {"class_type": "ApplyMSWMSAAttention", "inputs": inputs},
    }
    _, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, "2", {}))
    return [e["details"] for e in errors]


@pytest.mark.parametrize(("widgets", "message"), BAD_INPUTS)
def test_bad_input_is_a_validation_error_and_an_execute_error(pack, widgets, message):
    errors = validation_errors(widgets)
    assert errors and all(message in e for e in errors), errors
    values = MSW_SD15 | widgets
    with pytest.raises(ValueError) as info:
        pack["ApplyMSWMSAAttention"].execute(model=tiny_model("sd15"), **values)
    assert message in str(info.value)


def test_good_input_passes_validation(pack):
    assert validation_errors({"yaml_parameters": "start_time: 0.2\nverbose: true"}) == []


def test_yaml_overrides_inputs(pack):
    model = tiny_model("sd15")
    patched = apply_msw(pack, model, yaml_parameters="input_blocks: [4, 5]\noutput_blocks: ''")
    assert sorted(replaces_of(patched)) == [("input", 4), ("input", 5)]


# --- calls the effect cannot apply to --------------------------------------------------


def tiling_patches():
    """A HyperTile-like pair that splits the query tokens in two tiles (token count changes)."""

    def split_q(n, context, value, extra_options):
        batch, tokens, channels = n.shape
        return n.reshape(batch * 2, tokens // 2, channels), context, value

    def merge(n, extra_options):
        batch, tokens, channels = n.shape
        return n.reshape(batch // 2, tokens * 2, channels)

    return split_q, merge


def cross_attention_patch(tokens: int = 7):
    """An attn1 patch that turns attn1 into attention over another sequence."""

    def patch(n, context, value, extra_options):
        other = torch.linspace(-1, 1, n.shape[0] * tokens * n.shape[2]).reshape(n.shape[0], tokens, n.shape[2])
        return n, other, other

    return patch


@pytest.mark.parametrize("kind", ["token_count_changed", "cross_attention"])
def test_calls_it_cannot_window_run_exactly_as_unpatched(pack, logs, kind):
    base = tiny_model("sd15").clone()
    if kind == "token_count_changed":
        split_q, merge = tiling_patches()
        base.set_model_attn1_patch(split_q)
        base.set_model_attn1_output_patch(merge)
        expected_message = "tokens do not match the 16x24 map"
    else:
        base.set_model_attn1_patch(cross_attention_patch())
        expected_message = "attn1 attends to another sequence here (cross-attention)"
    patched = apply_msw(pack, base)
    result = sample(patched, "sd15", 16, 24, steps=3)
    assert torch.equal(result, sample(base, "sd15", 16, 24, steps=3))
    told = [m for m in logs.messages() if expected_message in m and "input block 1:" in m]
    assert len(told) == 1, told  # once per run, although every step hit it


# --- Simple node ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "line", "keys"),
    [
        (
            "sd15",
            "ApplyMSWMSAAttentionSimple: Using preset SD15: in/mid/out blocks [1,2 /  / 11,10,9], start/end percent 0.2/1.0",
            [("input", 1), ("input", 2), ("output", 9), ("output", 10), ("output", 11)],
        ),
        (
            "sdxl",
            "ApplyMSWMSAAttentionSimple: Using preset SDXL: in/mid/out blocks [4,5 /  / 3,4,5], start/end percent 0.2/1.0",
            [("input", 4), ("input", 5), ("output", 3), ("output", 4), ("output", 5)],
        ),
    ],
)
def test_simple_node_recognises_the_family(pack, logs, family, line, keys):
    model = tiny_model(family)
    patched = pack["ApplyMSWMSAAttentionSimple"].execute(model_type="auto", model=model).result[0]
    assert sorted(replaces_of(patched)) == keys
    assert any(m == f"[HiDiffusion] {line}" for m in logs.messages()), logs.messages()
    forced = pack["ApplyMSWMSAAttentionSimple"].execute(model_type=family.upper(), model=model).result[0]
    assert sorted(replaces_of(forced)) == keys
    patch = next(iter(replaces_of(patched).values()))
    assert patch.time.start == pytest.approx(model.get_model_object("model_sampling").percent_to_sigma(0.2))


def test_simple_node_refuses_a_model_type_that_does_not_fit(pack):
    with pytest.raises(ValueError, match="model_type = SDXL does not fit this model, which is SD1.x/SD2.x-like UNet"):
        pack["ApplyMSWMSAAttentionSimple"].execute(model_type="SDXL", model=tiny_model("sd15"))


def tiny_flux(weight_seed: int = 1234):
    """A tiny Flux (one double and one single block) with seeded random weights."""
    import comfy.ldm.flux.model
    import comfy.supported_models

    config = {
        "image_model": "flux",
        "in_channels": 16,
        "patch_size": 2,
        "out_channels": 16,
        "vec_in_dim": 32,
        "context_in_dim": 32,
        "hidden_size": 64,
        "mlp_ratio": 2.0,
        "num_heads": 4,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": [4, 6, 6],
        "theta": 10000,
        "qkv_bias": True,
        "guidance_embed": False,
        "dtype": torch.float32,
    }
    if "txt_ids_dims" in comfy.ldm.flux.model.FluxParams.__dataclass_fields__:  # ComfyUI 0.33.0 and newer
        config["txt_ids_dims"] = []
    return seeded_model(comfy.supported_models.Flux(config), weight_seed)


def seeded_model(model_config, weight_seed: int, buffers: tuple[str, ...] = ()):
    """The fp32 model of a ComfyUI ``model_config`` in a ModelPatcher, every weight (and the named
    buffers of its diffusion model, which a checkpoint would fill) drawn from a seeded generator:
    ComfyUI's layers skip init."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    generator = torch.Generator().manual_seed(weight_seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *(getattr(model.diffusion_model, name) for name in buffers)]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def test_a_dit_is_refused_with_a_clear_message(pack):
    flux = tiny_flux()
    for call in (
        lambda: pack["ApplyMSWMSAAttentionSimple"].execute(model_type="auto", model=flux),
        lambda: apply_msw(pack, flux),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert "SD1.x/SD2.x, SDXL" in str(info.value) or "SD1.x, SD2.x and SDXL" in str(info.value)
        assert "Flux is not a UNet" in str(info.value)


def test_applying_twice_keeps_only_the_later_settings(pack):
    model = tiny_model("sd15")
    twice = apply_msw(
        pack, apply_msw(pack, model, {"output_blocks": "3,4"}), {"input_blocks": "4", "output_blocks": ""}
    )
    once = apply_msw(pack, model, {"input_blocks": "4", "output_blocks": ""})
    assert sorted(replaces_of(twice)) == [("input", 4)]
    assert torch.equal(sample(twice, "sd15", 16, 16), sample(once, "sd15", 16, 16))


def test_module_loaded_by_comfyui_is_the_one_used(pack):
    msw = pack_module("hidiff.comfyui.msw_msa")
    patched = apply_msw(pack, tiny_model("sd15"))
    assert all(isinstance(p, msw.MswMsaAttention) for p in replaces_of(patched).values())


def test_simple_node_seed_widget_values(pack):
    node = pack["ApplyMSWMSAAttentionSimple"]
    inputs = widget_inputs(node, ["auto"])
    assert inputs == {"model_type": "auto"}
    patched = node.execute(model=tiny_model("sd15"), **inputs).result[0]
    assert torch.isfinite(sample(patched, "sd15", 16, 16, steps=2)).all()


def test_simple_nodes_check_their_dropdowns_at_queue_time(pack):
    """ComfyUI's validator skips V3 dropdown options; the Simple nodes check them."""
    assert pack["ApplyMSWMSAAttentionSimple"].validate_inputs(model_type="SD3") == (
        "model_type = 'SD3' is not valid; use one of auto, SD15, SDXL"
    )
    assert pack["ApplyMSWMSAAttentionSimple"].validate_inputs(model_type="auto") is True
    message = pack["ApplyRAUNetSimple"].validate_inputs(
        model_type="auto", res_mode="medium", upscale_mode="default", ca_upscale_mode="bicubic"
    )
    assert message.startswith("res_mode = 'medium' is not valid; use one of high (1536-2048)")
