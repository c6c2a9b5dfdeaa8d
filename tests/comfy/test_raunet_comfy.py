"""RAU-Net nodes inside real ComfyUI, on tiny SD1.5- and SDXL-layout UNets.

Feature-map sizes are recorded with block patches added to a clone after the node ran,
so they see exactly what the next block sees. Expected sizes follow method.md §1.3 for
any latent: RAD makes ceil(H/4) x ceil(W/4) out of a level-0 map, the CA pool halves
with ceil, and every restore lands on the exact skip size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass

import comfy.samplers
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from harness import REPO_ROOT, pack_module, rau_patches, sample, tiny_model

SEED_WORKFLOWS = REPO_ROOT / "tests" / "data" / "seed_workflows"
SEED_INPUTS = [
    "input_blocks",
    "output_blocks",
    "time_mode",
    "start_time",
    "end_time",
    "upscale_mode",
    "ca_start_time",
    "ca_end_time",
    "ca_input_blocks",
    "ca_output_blocks",
    "ca_upscale_mode",
    "ca_downscale_mode",
    "ca_downscale_factor",
    "two_stage_upscale_mode",
]
SEED_SD15 = ["3", "8", "percent", 0, 0.45, "bicubic", 0, 0.25, "4", "8", "bicubic", "avg_pool2d", 2, "disabled"]
SEED_SDXL = ["3", "5", "percent", 0, 0.55, "bicubic", 1, 0.3, "2", "7", "bicubic", "avg_pool2d", 2, "disabled"]
UPSCALES = ["bicubic", "bislerp", "bilinear", "nearest-exact", "nearest", "area"]
DOWNSCALES = ["avg_pool2d", "adaptive_avg_pool2d", *UPSCALES]
OFF = {"input_blocks": "", "output_blocks": "", "ca_input_blocks": "", "ca_output_blocks": ""}


@pytest.fixture(scope="module")
def rn():
    return pack_module("hidiff.comfyui.raunet")


@pytest.fixture(scope="module")
def rs():
    """RAU-Net's parameters and settings."""
    return pack_module("hidiff.comfyui.raunet_settings")


@pytest.fixture(scope="module")
def nodes(pack):
    """The node classes from ComfyUI's registry once registered there, else from the module."""
    module = pack_module("hidiff.comfyui.raunet_nodes")
    return {cls.__name__: pack.get(cls.__name__, cls) for cls in module.RAUNET_NODES}


def apply(nodes, model, yaml_parameters=None, **overrides):
    values = dict(zip(SEED_INPUTS, SEED_SD15))
    values.update(overrides)
    return nodes["ApplyRAUNet"].execute(model=model, yaml_parameters=yaml_parameters, **values).result[0]


@dataclass(frozen=True)
class Rec:
    kind: str
    block: int
    sigma: float
    h: tuple[int, int]
    hsp: tuple[int, int] | None = None


def recorded(model, after_skip: bool = False):
    """A clone whose every input/output block records (block, sigma, sizes)."""
    records: list[Rec] = []
    clone = model.clone()

    def sigma(options) -> float:
        return float(options["sigmas"].max())

    def on_input(h, options):
        records.append(Rec("input", options["block"][1], sigma(options), tuple(h.shape[-2:])))
        return h

    def on_output(h, hsp, options):
        records.append(Rec("output", options["block"][1], sigma(options), tuple(h.shape[-2:]), tuple(hsp.shape[-2:])))
        return h, hsp

    if after_skip:
        clone.set_model_input_block_patch_after_skip(on_input)
    else:
        clone.set_model_input_block_patch(on_input)
    clone.set_model_output_block_patch(on_output)
    return clone, records


def sigmas_of(model, steps: int) -> list[float]:
    return [
        float(s) for s in comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    ]


def sizes_at(records: list[Rec], sigma: float) -> dict[tuple[str, int], Rec]:
    """The records of the first model call at ``sigma``, by block."""
    out: dict[tuple[str, int], Rec] = {}
    for r in records:
        if abs(r.sigma - sigma) <= 1e-4 * sigma:
            out.setdefault((r.kind, r.block), r)
    return out


def c(size: int, divisor: int) -> int:
    return math.ceil(size / divisor)


def ours(model, name: str, kind: str | None = None) -> list:
    """RAU-Net's own patches of one list (the ControlNet bridge's are another effect),
    optionally only those of one class."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {}).get(name, [])
    found = [
        p
        for p in patches
        if getattr(p if name != "forward_timestep_embed_patch" else p[1], "hidiffusion_effect", "")
        == "hidiffusion_raunet"
    ]
    return [p for p in found if kind is None or type(p).__name__ == kind]


# --- the nodes -------------------------------------------------------------------------


def test_nodes_keep_the_seed_inputs_order_and_options(nodes):
    info = nodes["ApplyRAUNet"].GET_NODE_INFO_V1()
    assert list(info["input"]["required"]) == ["model", *SEED_INPUTS]
    assert list(info["input"]["optional"]) == ["yaml_parameters"]
    required = info["input"]["required"]
    assert required["upscale_mode"][1]["options"] == UPSCALES
    assert required["ca_upscale_mode"][1]["options"] == UPSCALES
    assert required["two_stage_upscale_mode"][1]["options"] == ["disabled", *UPSCALES]
    assert required["ca_downscale_mode"][1]["options"] == DOWNSCALES
    simple = nodes["ApplyRAUNetSimple"].GET_NODE_INFO_V1()["input"]["required"]
    assert list(simple) == ["model", "model_type", "res_mode", "upscale_mode", "ca_upscale_mode"]
    assert simple["model_type"][1]["options"] == ["auto", "SD15", "SDXL"]
    assert simple["res_mode"][1]["options"] == ["high (1536-2048)", "low (1024 or lower)", "ultra (over 2048)"]
    assert simple["upscale_mode"][1]["options"] == ["default", *UPSCALES]
    assert simple["ca_upscale_mode"][1]["options"] == ["default", *UPSCALES]
    for spec in (*required.values(), *info["input"]["optional"].values(), *simple.values()):
        assert spec[1].get("tooltip")


@pytest.mark.parametrize(("family", "widgets", "size"), [("sd15", SEED_SD15, (21, 29)), ("sdxl", SEED_SDXL, (45, 29))])
def test_seed_workflows_load_and_sample(nodes, family, widgets, size):
    inputs = dict(zip(SEED_INPUTS, widgets, strict=True))
    assert nodes["ApplyRAUNet"].validate_inputs(**inputs) is True
    model = tiny_model(family)
    patched = nodes["ApplyRAUNet"].execute(model=model, **inputs).result[0]
    clone, records = recorded(patched)
    result = sample(clone, family, *size, steps=2)
    assert torch.isfinite(result).all() and result.shape[-2:] == size
    first = sizes_at(records, sigmas_of(model, 2)[0])
    height, width = size
    assert first[("input", 3)].h == (c(height, 4), c(width, 4))  # RAD on input 3 in both workflows
    assert first[("input", 2)].h == size  # SDXL: the CA start 1 switches CA off
    if family == "sdxl":
        assert not ours(patched, "input_block_patch")


def test_seed_example_workflow_files_hold_these_widgets(nodes):
    assert len(list(SEED_WORKFLOWS.glob("*.json"))) == 2
    found = [
        node["widgets_values"]
        for path in sorted(SEED_WORKFLOWS.glob("*.json"))
        for node in json.loads(path.read_text())["nodes"]
        if node["type"] == "ApplyRAUNet"
    ]
    assert sorted(map(str, found)) == sorted(map(str, [SEED_SD15, SEED_SDXL]))


# --- sizes: method.md §1.3 ---------------------------------------------------------------


def test_sd15_sizes_while_active_and_after_at_odd_non_square_size(nodes):
    """RAD 3/8 + CA 4/8 (the node's defaults) at 37x53: deep blocks at native size, then full."""
    model = tiny_model("sd15")
    patched = apply(nodes, model, end_time=0.45, ca_end_time=0.3)
    clone, records = recorded(patched)
    sigmas = sigmas_of(model, 2)
    sample(clone, "sd15", 37, 53, steps=2)
    active, after = sizes_at(records, sigmas[0]), sizes_at(records, sigmas[1])
    rad = (c(37, 4), c(53, 4))  # 10x14
    pooled = (c(rad[0], 2), c(rad[1], 2))  # 5x7
    assert active[("input", 2)].h == (37, 53)
    assert active[("input", 3)].h == rad
    assert active[("input", 4)].h == pooled
    assert active[("input", 6)].h == (c(pooled[0], 2), c(pooled[1], 2))
    assert active[("output", 7)].h == pooled
    assert active[("output", 8)].h == active[("output", 8)].hsp == rad  # CA restored to the exact skip
    assert active[("output", 9)].h == (37, 53)  # RAU back to the exact skip
    assert after[("input", 3)].h == after[("input", 4)].h == (19, 27)
    assert after[("output", 0)].h == (5, 7)
    assert after[("output", 9)].h == (37, 53)


def test_sd15_rad_on_the_real_model_is_the_dilated_conv_bit_for_bit(nodes):
    model = tiny_model("sd15")
    patched = apply(nodes, model, **{**OFF, "input_blocks": "3", "output_blocks": "8"})
    layer = model.get_model_object("diffusion_model.input_blocks.3.0")
    seen = []
    clone = patched.clone()
    clone.set_model_input_block_patch(lambda h, o: seen.append((o["block"][1], h.clone())) or h)
    sample(clone, "sd15", 21, 29, steps=1)
    before, after = seen[2][1], seen[3][1]
    assert seen[3][0] == 3 and after.shape[-2:] == (c(21, 4), c(29, 4))
    with torch.no_grad():
        reference = F.conv2d(before, layer.op.weight, layer.op.bias, stride=4, padding=2, dilation=2)
    assert torch.equal(after, reference)


def test_sdxl_sizes_with_rad_and_ca_at_once(nodes):
    model = tiny_model("sdxl")
    patched = apply(nodes, model, input_blocks="3", output_blocks="5", ca_input_blocks="4", ca_output_blocks="5")
    clone, records = recorded(patched)
    sigmas = sigmas_of(model, 3)
    sample(clone, "sdxl", 45, 29, steps=3)
    active, after = sizes_at(records, sigmas[0]), sizes_at(records, sigmas[2])
    rad = (c(45, 4), c(29, 4))  # 12x8
    assert active[("input", 3)].h == rad
    assert active[("input", 4)].h == (c(rad[0], 2), c(rad[1], 2))
    assert active[("output", 5)].h == active[("output", 5)].hsp == rad
    assert active[("output", 6)].h == (45, 29)
    assert after[("input", 3)].h == after[("input", 4)].h == (23, 15)


def test_sdxl_official_blocks_and_several_pairs_at_once(nodes):
    """Official SDXL RAD 6/2 with CA 4/5 and CA 1/8 together: every restore exact."""
    model = tiny_model("sdxl")
    patched = apply(nodes, model, input_blocks="6", output_blocks="2", ca_input_blocks="4,1", ca_output_blocks="5,8")
    clone, records = recorded(patched)
    sample(clone, "sdxl", 45, 29, steps=1)
    first = sizes_at(records, sigmas_of(model, 1)[0])
    assert first[("input", 1)].h == (23, 15)  # CA on input 1
    assert first[("input", 3)].h == (12, 8)
    assert first[("input", 4)].h == (6, 4)  # CA on input 4
    assert first[("input", 6)].h == (2, 1)  # RAD of 6x4
    assert first[("output", 3)].h == (6, 4)  # RAU at output 2 back to the skip of input 5
    assert first[("output", 5)].h == (12, 8)
    assert first[("output", 8)].h == first[("output", 8)].hsp == (45, 29)


def test_sd15_simple_high_preset_sizes_and_log(nodes, logs):
    model = tiny_model("sd15")
    patched = (
        nodes["ApplyRAUNetSimple"]
        .execute(
            model=model,
            model_type="auto",
            res_mode="high (1536-2048)",
            upscale_mode="default",
            ca_upscale_mode="default",
        )
        .result[0]
    )
    assert (
        "[HiDiffusion] ApplyRAUNetSimple: Using preset SD15 high: upscale bicubic, in/out blocks [3 / 8], "
        "start/end percent 0.0/0.5  |  CA upscale bicubic, CA in/out blocks [1 / 11], CA start/end percent 0.0/0.35"
    ) in logs.messages()
    clone, records = recorded(patched)
    sample(clone, "sd15", 21, 29, steps=1)
    first = sizes_at(records, sigmas_of(model, 1)[0])
    assert first[("input", 1)].h == (11, 15)  # CA on input 1
    assert first[("input", 3)].h == (3, 4)  # RAD of 11x15
    assert first[("output", 9)].h == (11, 15)  # RAU to the pooled skip of input 2
    assert first[("output", 11)].h == first[("output", 11)].hsp == (21, 29)


def test_simple_sdxl_low_is_off_and_model_type_is_checked(nodes, logs):
    simple = nodes["ApplyRAUNetSimple"]
    patched = simple.execute(
        model=tiny_model("sdxl"),
        model_type="SDXL",
        res_mode="low (1024 or lower)",
        upscale_mode="area",
        ca_upscale_mode="bislerp",
    ).result[0]
    assert not ours(patched, "forward_timestep_embed_patch") and not ours(patched, "input_block_patch")
    assert any("Using preset SDXL low: upscale area" in m and "CA upscale bislerp" in m for m in logs.messages())
    with pytest.raises(ValueError, match="does not fit this model"):
        simple.execute(
            model=tiny_model("sdxl"),
            model_type="SD15",
            res_mode="low (1024 or lower)",
            upscale_mode="default",
            ca_upscale_mode="default",
        )


def test_ca_after_skip_mode_pairs_k_with_n_minus_1_minus_k(nodes):
    model = tiny_model("sd15")
    patched = apply(
        nodes,
        model,
        yaml_parameters="ca_input_after_skip_mode: true",
        **{**OFF, "ca_input_blocks": "3", "ca_output_blocks": "8"},
    )
    clone, records = recorded(patched, after_skip=True)
    sample(clone, "sd15", 21, 29, steps=1)
    first = sizes_at(records, sigmas_of(model, 1)[0])
    assert first[("input", 3)].h == (6, 8)  # after the skip of input 3 (11x15) was stored
    assert first[("output", 8)].h == first[("output", 8)].hsp == (11, 15)
    with pytest.raises(ValueError, match="valid input->output pairs"):
        apply(nodes, model, **{**OFF, "ca_input_blocks": "3", "ca_output_blocks": "8"})


# --- every mode --------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "two_stage"), [*((m, "disabled") for m in UPSCALES), ("bicubic", "nearest-exact")])
def test_every_upscale_mode_restores_the_exact_skip(nodes, mode, two_stage):
    model = tiny_model("sdxl")
    patched = apply(
        nodes,
        model,
        **{**OFF, "input_blocks": "3", "output_blocks": "5"},
        upscale_mode=mode,
        two_stage_upscale_mode=two_stage,
    )
    assert bool(rau_patches(patched)) == (mode != "nearest" or two_stage != "disabled")
    clone, records = recorded(patched)
    result = sample(clone, "sdxl", 45, 29, steps=1)
    assert torch.isfinite(result).all()
    first = sizes_at(records, sigmas_of(model, 1)[0])
    assert first[("output", 5)].h == (12, 8) and first[("output", 6)].h == (45, 29)


def test_rau_handler_is_the_method_on_its_blocks_and_stock_otherwise(rn):
    model = tiny_model("sd15")
    layer = model.get_model_object("diffusion_model.output_blocks.8.2")
    x = torch.randn(2, layer.channels, 10, 14)
    shape = (2, 64, 37, 53)

    def call(rau, x, block=8):
        return rau(layer, x, None, None, {"block": ("output", block)}, shape, None, None, None)

    with torch.no_grad():
        rau = rn.ResolutionAwareUpsample([8], "bicubic", "disabled")
        assert torch.equal(call(rau, x), layer.conv(F.interpolate(x, size=(37, 53), mode="bicubic")))
        assert torch.equal(call(rau, x, block=5), layer(x, output_shape=shape))  # not a paired block
        normal = torch.randn(2, layer.channels, 19, 27)
        assert torch.equal(call(rau, normal), layer(normal, output_shape=shape))
        two = rn.ResolutionAwareUpsample([8], "bicubic", "nearest-exact")
        staged = F.interpolate(F.interpolate(x, size=(19, 27), mode="nearest-exact"), size=(37, 53), mode="bicubic")
        assert torch.equal(call(two, x), layer.conv(staged))


def test_upscale_modes_change_the_image(nodes):
    model = tiny_model("sdxl")
    results = {
        mode: sample(
            apply(nodes, model, **{**OFF, "input_blocks": "3", "output_blocks": "5"}, upscale_mode=mode),
            "sdxl",
            29,
            21,
            steps=1,
        )
        for mode in ("bicubic", "nearest")
    }
    assert not torch.equal(results["bicubic"], results["nearest"])


@pytest.mark.parametrize("mode", DOWNSCALES)
def test_every_downscale_mode(nodes, mode):
    model = tiny_model("sdxl")
    patched = apply(
        nodes,
        model,
        **{**OFF, "ca_input_blocks": "4", "ca_output_blocks": "5"},
        ca_downscale_mode=mode,
        ca_upscale_mode="bilinear",
    )
    clone, records = recorded(patched)
    assert torch.isfinite(sample(clone, "sdxl", 45, 29, steps=1)).all()
    first = sizes_at(records, sigmas_of(model, 1)[0])
    assert first[("input", 4)].h == (12, 8)
    assert first[("output", 5)].h == first[("output", 5)].hsp == (23, 15)


def test_fractional_and_separate_width_factors(nodes):
    model = tiny_model("sdxl")
    patched = apply(
        nodes,
        model,
        yaml_parameters="ca_downscale_factor_w: 3",
        **{**OFF, "ca_input_blocks": "4", "ca_output_blocks": "5"},
        ca_downscale_mode="adaptive_avg_pool2d",
        ca_downscale_factor=1.5,
    )
    clone, records = recorded(patched)
    sample(clone, "sdxl", 45, 29, steps=1)
    assert sizes_at(records, sigmas_of(model, 1)[0])[("input", 4)].h == (c(23, 1.5), c(15, 3))


@pytest.mark.parametrize("cap", [0.0, 0.5])
def test_fadeout_moves_the_factor_towards_one(nodes, rn, cap):
    model = tiny_model("sdxl")
    patched = apply(
        nodes,
        model,
        yaml_parameters=f"ca_fadeout_start_time: 0.0\nca_fadeout_cap: {cap}",
        **{**OFF, "ca_input_blocks": "4", "ca_output_blocks": "5"},
        ca_start_time=0.0,
        ca_end_time=1.0,
        ca_downscale_mode="adaptive_avg_pool2d",
    )
    clone, records = recorded(patched)
    steps = 4
    sigmas = sigmas_of(model, steps)
    sample(clone, "sdxl", 45, 29, steps=steps)
    to_sigma = model.get_model_object("model_sampling").percent_to_sigma
    got = [sizes_at(records, s)[("input", 4)].h for s in sigmas[:steps]]
    expected = []
    for sigma in sigmas[:steps]:
        percent = rn.sigma_to_percent(sigma, to_sigma)
        factor = 1.0 + max(cap, 1.0 - percent)
        expected.append((c(23, factor), c(15, factor)))
    assert got == expected
    assert got[0] == (12, 8) and got == sorted(got)
    assert (got[-1] == (23, 15)) == (cap == 0.0)


# --- settings errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "yaml", "fragment"),
    [
        ({}, "ca_fadeout_start: 0.1", "unknown key(s) ca_fadeout_start. Valid keys:"),
        ({}, "- 1\n- 2", "must be a YAML mapping"),
        ({}, "ca_downscale_factor: 1.5", "must be a whole number with ca_downscale_mode avg_pool2d"),
        ({"ca_downscale_factor": 0.5, "ca_downscale_mode": "bicubic"}, None, "ca_downscale_factor = 0.5 is not valid"),
        ({}, "ca_fadeout_cap: 2", "ca_fadeout_cap = 2 is out of range"),
        ({}, "ca_fadeout_start_time: 0.5", "must lie between ca_start_time = 0 and ca_end_time = 0.25"),
        ({"upscale_mode": "lanczos"}, None, "upscale_mode = 'lanczos' is not valid; use one of bicubic, bislerp"),
        ({"two_stage_upscale_mode": "x"}, None, "use one of disabled, bicubic"),
        ({"start_time": 0.6, "end_time": 0.2}, None, "start_time = 0.6 comes after end_time = 0.2"),
        ({"ca_start_time": 0.3, "ca_end_time": 0.1}, None, "ca_start_time = 0.3 comes after ca_end_time = 0.1"),
        ({"input_blocks": "3,x"}, None, "input_blocks = '3,x' contains 'x'"),
        ({}, "verbose: 1", "verbose must be true or false"),
    ],
)
def test_settings_errors_name_the_input(nodes, rs, overrides, yaml, fragment):
    inputs = {**dict(zip(SEED_INPUTS, SEED_SD15)), **overrides}
    with pytest.raises(ValueError, match=re.escape(fragment)):
        rs.build_settings(yaml, **inputs)
    assert fragment in nodes["ApplyRAUNet"].validate_inputs(**inputs, yaml_parameters=yaml)


def test_an_error_in_a_yaml_value_says_it_came_from_the_yaml(pack, rs):
    """The widget of the same name is not what the user must fix, so the message says so."""
    with pytest.raises(ValueError) as error:
        rs.build_settings("start_time: [1, 2]")
    assert str(error.value) == "yaml_parameters: start_time must be a number, got [1, 2]"
    with pytest.raises(ValueError) as error:
        rs.build_settings(None, start_time="soon")
    assert str(error.value) == "start_time must be a number, got 'soon'"
    msw = pack["ApplyMSWMSAAttention"].validate_inputs(
        input_blocks="1", middle_blocks="", output_blocks="9", time_mode="percent", start_time=0.0, end_time=1.0,
        yaml_parameters="shift_mode: sometimes",
    )  # fmt: skip
    assert msw.startswith("yaml_parameters: shift_mode = 'sometimes' is not valid")
    assert pack["ApplyHiDiffusion"].validate_inputs(advanced="turbo: maybe") == (
        "advanced: turbo must be true or false, got 'maybe'"
    )


@pytest.mark.parametrize("module", ["raunet_settings", "msw_msa_settings"])
def test_every_setting_is_declared_once_and_reaches_the_typed_settings(module):
    """The declaration is the one source: each key is declared once, each declared key is a
    field of the typed settings and each field is declared, so no key can be accepted and
    then dropped, and no setting exists that users cannot reach."""
    settings = pack_module(f"hidiff.comfyui.{module}")
    declared = [parameter.name for parameter in settings.PARAMETERS.parameters]
    built = settings.build_settings()
    assert len(declared) == len(set(declared))
    assert set(declared) == {field.name for field in dataclasses.fields(built)}
    widgets = settings.PARAMETERS.widget_names
    assert declared[: len(widgets)] == list(widgets)  # the widgets first, in the order workflows save them


def test_yaml_lists_every_valid_key(rs):
    with pytest.raises(ValueError) as error:
        rs.build_settings("nope: 1")
    for key in [
        *SEED_INPUTS,
        "ca_downscale_factor_w",
        "ca_input_after_skip_mode",
        "ca_fadeout_start_time",
        "ca_fadeout_cap",
        "verbose",
    ]:
        assert f"  {key}:" in str(error.value)


@pytest.mark.parametrize(
    ("family", "overrides", "fragments"),
    [
        ("sd15", {"input_blocks": "3", "output_blocks": "5"}, ["output block 8, which is missing", "3->8, 6->5, 9->2"]),
        (
            "sd15",
            {"input_blocks": "4", "output_blocks": "8"},
            ["input block 4 is not a Downsample", "SD1.x/SD2.x-like UNet"],
        ),
        (
            "sd15",
            {"input_blocks": "", "output_blocks": "8"},
            ["output_blocks: output block 8 pairs with input block 3"],
        ),
        (
            "sd15",
            {"ca_input_blocks": "4", "ca_output_blocks": "7"},
            ["ca_input_blocks: input block 4 pairs with output block 8", "4->8", "1->11"],
        ),
        (
            "sd15",
            {"ca_input_blocks": "3", "ca_output_blocks": "8"},
            ["ca_input_blocks: input block 3 cannot be shrunk"],
        ),
        (
            "sdxl",
            {"input_blocks": "3", "output_blocks": "8"},
            ["valid input->output pairs for this SDXL-like UNet", "3->5, 6->2"],
        ),
        ("sdxl", {"input_blocks": "9", "output_blocks": "5"}, ["input block 9 does not exist on this model"]),
    ],
)
def test_wrong_pairs_are_refused_with_the_valid_pairs(nodes, family, overrides, fragments):
    with pytest.raises(ValueError) as error:
        apply(nodes, tiny_model(family), **overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_a_wrong_pair_in_a_switched_off_part_only_warns(nodes, logs):
    patched = apply(
        nodes, tiny_model("sdxl"), **{**OFF, "ca_input_blocks": "3", "ca_output_blocks": "6"}, ca_start_time=1.0
    )
    assert not ours(patched, "input_block_patch") and len(ours(patched, "forward_timestep_embed_patch")) == 0
    warning = [m for m in logs.messages(logging.WARNING) if "ca_input_blocks: input block 3" in m]
    assert warning and "CA is switched off by its start time" in warning[0] and "4->5" in warning[0]


def test_a_dit_is_refused(rn, rs):
    class NotAUNet:
        def get_model_object(self, name):
            return torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="RAU-Net applies to SD1.x, SD2.x and SDXL UNets.*Linear is not a UNet"):
        rn.apply_raunet(NotAUNet(), rs.build_settings())


# --- isolation, determinism, recovery ------------------------------------------------------


def test_input_model_untouched_and_same_seed_same_image(nodes):
    model = tiny_model("sdxl")
    options_before, objects_before = repr(model.model_options), dict(model.object_patches)
    before = sample(model, "sdxl", 29, 21, seed=5, steps=2)
    patched = apply(nodes, model, input_blocks="3", output_blocks="5", ca_input_blocks="4", ca_output_blocks="5")
    first = sample(patched, "sdxl", 29, 21, seed=5, steps=2)
    assert torch.equal(first, sample(patched, "sdxl", 29, 21, seed=5, steps=2)) and not torch.equal(first, before)
    assert torch.equal(before, sample(model, "sdxl", 29, 21, seed=5, steps=2))
    assert repr(model.model_options) == options_before and model.object_patches == objects_before


def test_global_rng_untouched_by_the_patches(nodes):
    """ComfyUI reseeds the global RNG to make the noise; the patches must draw nothing on top."""
    model = tiny_model("sdxl")
    patched = apply(nodes, model, input_blocks="3", output_blocks="5", ca_input_blocks="4", ca_output_blocks="5")
    torch.manual_seed(123)
    sample(model, "sdxl", 29, 21, seed=1, steps=2)
    plain = torch.get_rng_state()
    torch.manual_seed(123)
    sample(patched, "sdxl", 29, 21, seed=1, steps=2)
    assert torch.equal(plain, torch.get_rng_state())


def test_a_failed_run_leaves_nothing_behind(nodes):
    model = tiny_model("sdxl")
    settings = {"input_blocks": "3", "output_blocks": "5", "ca_input_blocks": "2", "ca_output_blocks": "7"}
    patched = apply(nodes, model, **settings, end_time=1.0, ca_end_time=1.0)
    calls = []

    def explode(h, options):
        if options["block"] == ("input", 2):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("boom mid-sampling")
        return h

    plain = sample(model, "sdxl", 45, 29, steps=2, seed=9)
    failing = patched.clone()
    failing.set_model_input_block_patch(explode)
    with pytest.raises(RuntimeError, match="boom"):
        sample(failing, "sdxl", 45, 29, steps=2)
    after_failure = sample(patched, "sdxl", 45, 29, steps=2, seed=9)
    fresh = sample(apply(nodes, model, **settings, end_time=1.0, ca_end_time=1.0), "sdxl", 45, 29, steps=2, seed=9)
    assert torch.equal(after_failure, fresh) and not torch.equal(after_failure, plain)
    assert torch.equal(plain, sample(model, "sdxl", 45, 29, steps=2, seed=9))


def test_applying_twice_replaces_the_first(nodes):
    model = tiny_model("sdxl")
    first = apply(nodes, model, input_blocks="3", output_blocks="5", ca_input_blocks="4", ca_output_blocks="5")
    second = apply(
        nodes,
        first,
        input_blocks="6",
        output_blocks="2",
        ca_input_blocks="2",
        ca_output_blocks="7",
        upscale_mode="nearest",
    )
    assert len(ours(second, "forward_timestep_embed_patch")) == 1
    assert len(ours(second, "input_block_patch")) == 1
    assert len(ours(second, "output_block_patch", "CaRestore")) == 1
    assert len(ours(second, "output_block_patch", "MiddleBlockGuard")) == 1
    assert not rau_patches(second) and not second.object_patches  # nearest needs none, and the first's is gone
    clone, records = recorded(second)
    sample(clone, "sdxl", 45, 29, steps=1)
    first_call = sizes_at(records, sigmas_of(model, 1)[0])
    assert first_call[("input", 2)].h == (23, 15) and first_call[("input", 3)].h == (12, 8)
    assert first_call[("input", 6)].h == (c(12, 4), c(8, 4))


# --- other effects on the same blocks --------------------------------------------------------


def deep_shrink(model, block: int, end: float = 0.35):
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    return PatchModelAddDownscale.execute(model, block, 2.0, 0.0, end, True, "bicubic", "bicubic").result[0]


def test_deep_shrink_on_the_same_block_is_refused(nodes):
    shrunk = deep_shrink(tiny_model("sd15"), 3)
    with pytest.raises(ValueError, match="Deep Shrink .* on input block 3 .*Only one effect may own a block"):
        apply(nodes, shrunk)


def test_deep_shrink_elsewhere_or_later_is_reported(nodes, logs):
    model = tiny_model("sd15")
    apply(nodes, deep_shrink(model, 6), **{**OFF, "input_blocks": "3", "output_blocks": "8"})
    assert any(
        "Deep Shrink (PatchModelAddDownscale) on input block 6" in m and "compound" in m
        for m in logs.messages(logging.WARNING)
    )
    apply(
        nodes,
        deep_shrink(model, 3, end=0.2),
        **{**OFF, "input_blocks": "3", "output_blocks": "8"},
        start_time=0.5,
        end_time=0.9,
    )
    logs.records.clear()
    later = deep_shrink(apply(nodes, model, **{**OFF, "input_blocks": "3", "output_blocks": "8"}), 6)
    sample(later, "sd15", 21, 29, steps=1)
    warnings = [m for m in logs.messages(logging.WARNING) if "Deep Shrink" in m]
    assert len(warnings) == 1 and "input block 6 is active in this run" in warnings[0]


def test_foreign_downsample_handler_is_reported_and_later_ones_still_run(nodes, logs):
    from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample

    model = tiny_model("sd15")
    calls = []

    def theirs(layer, x, *args):
        calls.append(x.shape[-2:])
        return layer(x)

    first = model.clone()
    first.set_model_forward_timestep_embed_patch((Downsample, theirs))
    apply(nodes, first)
    assert any("another node already handles Downsample layers" in m for m in logs.messages(logging.WARNING))
    second = apply(nodes, model, **{**OFF, "input_blocks": "3", "output_blocks": "8"}, upscale_mode="nearest")
    second.set_model_forward_timestep_embed_patch((Downsample, theirs))
    sample(second, "sd15", 21, 29, steps=1)
    assert {tuple(s) for s in calls} == {(6, 8), (3, 4)}  # inputs 6 and 9; input 3 was ours (RAD)


def test_verbose_reports_each_resize_once_per_run(nodes, logs):
    patched = apply(
        nodes, tiny_model("sd15"), yaml_parameters="verbose: true", ca_input_blocks="1", ca_output_blocks="11"
    )
    sample(patched, "sd15", 21, 29, steps=2)
    messages = [m for m in logs.messages(logging.INFO) if m.startswith("[HiDiffusion] RAU-Net ")]
    assert "[HiDiffusion] RAU-Net input block 1: CA avg_pool2d 21x29 -> 11x15 (factor 2x2)" in messages
    assert "[HiDiffusion] RAU-Net input block 3: RAD 11x15 -> 3x4" in messages
    assert "[HiDiffusion] RAU-Net output block 11: CA bicubic 11x15 -> 21x29" in messages
    assert len(messages) == len(set(messages))


def test_with_msw_msa_at_odd_size(nodes, pack):
    """RAU-Net + MSW-MSA (the usual pairing): the windows follow the shrunk maps exactly."""
    model = tiny_model("sdxl")
    patched = apply(nodes, model, input_blocks="3", output_blocks="5", ca_input_blocks="4", ca_output_blocks="5")
    both = (
        pack["ApplyMSWMSAAttention"]
        .execute(
            model=patched,
            input_blocks="4,5",
            middle_blocks="",
            output_blocks="3,4,5",
            time_mode="percent",
            start_time=0.0,
            end_time=1.0,
        )
        .result[0]
    )
    result = sample(both, "sdxl", 45, 29, steps=2)
    assert torch.isfinite(result).all() and not torch.equal(result, sample(patched, "sdxl", 45, 29, steps=2))


def documented_pairs() -> dict[str, dict[str, str]]:
    """The pair lists in the node notes' table (docs/node-notes.md, shown in docs/nodes.md), by model and column."""
    text = (REPO_ROOT / "docs" / "node-notes.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in ("SD1.x / SD2.x", "SDXL"):
            rows[cells[0]] = {"rad": cells[1], "ca": cells[2], "after_skip": cells[3]}
    return rows


def test_the_documented_pairs_come_from_the_structure(rn):
    docs = documented_pairs()
    for family, row in (("sd15", "SD1.x / SD2.x"), ("sdxl", "SDXL")):
        unet = rn.unet_map_of(tiny_model(family))
        assert docs[row] == {
            "rad": rn.pairs_text(unet.downsample_pairs()),
            "ca": rn.pairs_text(unet.pool_pairs()),
            "after_skip": rn.pairs_text(unet.after_skip_pairs()),
        }


# --- a middle block too small for SAG or FreeU V2 ------------------------------------------------


def middle_block_check(rn, model):
    """The check RAU-Net's run-state wrapper makes before the first step."""
    return pack_module("hidiff.comfyui.run_state").run_wrapper(model).check_of(rn.EFFECT)


@pytest.mark.parametrize(
    ("family", "size", "yaml", "overrides"),
    [
        ("sd15", (21, 29), None, {}),
        ("sd15", (37, 53), None, {"ca_start_time": 0.2, "ca_end_time": 0.8}),
        ("sd15", (24, 40), "ca_input_after_skip_mode: true", {"ca_output_blocks": "7"}),
        ("sd15", (45, 31), "ca_downscale_factor_w: 3.0", {"ca_downscale_factor": 1.5, "ca_downscale_mode": "bicubic"}),
        ("sd15", (33, 47), "ca_fadeout_start_time: 0.1", {"ca_end_time": 0.7, "ca_downscale_factor": 3.0}),
        (
            "sdxl",
            (45, 29),
            None,
            {"input_blocks": "3,6", "output_blocks": "2,5", "ca_input_blocks": "4", "ca_output_blocks": "5"},
        ),
    ],
)
def test_the_planned_middle_block_is_the_one_sampling_gives(nodes, rn, family, size, yaml, overrides):
    """The check before the first step works the middle block's size out from the latent and
    the sigma; at every step it is the size the UNet really has there."""
    settings = {"end_time": 0.7, **overrides}
    patched = apply(nodes, tiny_model(family), yaml_parameters=yaml, **settings)
    check = middle_block_check(rn, patched)
    clone, records = recorded(patched)
    steps = 5
    sample(clone, family, *size, steps=steps)
    for sigma in sigmas_of(patched, steps)[:-1]:
        assert sizes_at(records, sigma)[("output", 0)].h == check.middle_size(*size, sigma), sigma


LATE = {"start_time": 0.2, "end_time": 0.6, "ca_start_time": 0.2, "ca_end_time": 0.5}
"""RAU-Net only from the second of 4 steps: the first step runs unpatched."""


def freeu_v2(model):
    from comfy_extras.nodes_freelunch import FreeU_V2

    return FreeU_V2().patch(model, 1.3, 1.4, 0.9, 0.2)[0]


def sag(model):
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    return SelfAttentionGuidance.execute(model, 0.8, 2.0).result[0]


def unet_calls(model):
    """A clone that counts its UNet calls."""
    from comfy.patcher_extension import WrappersMP

    calls: list[int] = []

    def count(executor, *args, **kwargs):
        calls.append(1)
        return executor(*args, **kwargs)

    clone = model.clone()
    clone.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "test_count", count)
    return clone, calls


TOO_SMALL = [
    (freeu_v2, (21, 29), "FreeU_V2 (comfy_extras.nodes_freelunch) turns a 1x1 map into NaN", "middle block to 1x1"),
    (sag, (24, 40), "Self-Attention Guidance (SAG) cannot rebuild its attention map from 2 token(s)", "to 1x2"),
]


@pytest.mark.parametrize(("other", "size", "problem", "middle"), TOO_SMALL, ids=["freeu_v2", "sag"])
@pytest.mark.parametrize("order", ["other_first", "other_last"])
def test_a_middle_block_too_small_for_another_node_is_refused_before_the_first_step(
    nodes, other, size, problem, middle, order
):
    model = tiny_model("sd15")
    both = apply(nodes, other(model), **LATE) if order == "other_first" else other(apply(nodes, model, **LATE))
    counted, calls = unet_calls(both)
    with pytest.raises(ValueError) as error:
        sample(counted, "sd15", *size, steps=4)
    assert calls == []  # refused before any step, though RAU-Net only acts from the second one
    message = str(error.value)
    assert problem in message and f"{size[0]}x{size[1]} latent" in message and middle in message


def foreign_input_patch(model):
    """Another node's (no-op) input block patch: RAU-Net can no longer know the sizes in advance."""
    clone = model.clone()
    clone.set_model_input_block_patch(lambda h, options: h)
    return clone


@pytest.mark.parametrize(("other", "size", "problem", "middle"), TOO_SMALL, ids=["freeu_v2", "sag"])
@pytest.mark.parametrize("why", ["foreign_input_patch", "uni_pc"])
def test_where_sizes_cannot_be_foreseen_the_guard_still_stops_the_run(nodes, other, size, problem, middle, why):
    """Another node on the input side, or a sampler that may pick its own sigmas (only the
    first step is checked then): the run starts, and the guard stops it at the first step
    RAU-Net acts, with the same message."""
    model = other(apply(nodes, tiny_model("sd15"), **LATE))
    sampler = "euler"
    if why == "foreign_input_patch":
        model = foreign_input_patch(model)
    else:
        sampler = "uni_pc"
    counted, calls = unet_calls(model)
    with pytest.raises(ValueError) as error:
        sample(counted, "sd15", *size, steps=4, sampler=sampler)
    assert calls  # the first step ran
    message = str(error.value)
    assert problem in message and f"{size[0]}x{size[1]} latent" in message and middle in message


def test_a_middle_block_large_enough_is_not_refused(nodes):
    """FreeU V2 on a 2x2 middle block and SAG on a 3x4 one work; the check lets them run."""
    model = tiny_model("sd15")
    assert torch.isfinite(sample(freeu_v2(apply(nodes, model)), "sd15", 37, 53, steps=2)).all()
    assert torch.isfinite(sample(sag(apply(nodes, model)), "sd15", 45, 61, steps=2)).all()
