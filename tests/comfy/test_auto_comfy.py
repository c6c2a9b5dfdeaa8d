"""The HiDiffusion auto node, Inspect, and structure-derived presets, in real ComfyUI."""

from __future__ import annotations

import logging

import pytest
import torch
from harness import sample, tiny_model
from test_msw_msa_comfy import replaces_of, tiny_flux


def auto(pack, model, width, height, advanced=None, **toggles):
    values = {"raunet": True, "msw_msa": True, **toggles}
    return (
        pack["ApplyHiDiffusion"].execute(model=model, width=width, height=height, advanced=advanced, **values).result[0]
    )


def raunet_patches(model) -> dict:
    """{patch kind: [repr of our RAU-Net patches]} read from the patched clone."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    found = {}
    for name, entries in patches.items():
        for entry in entries:
            target = entry[1] if isinstance(entry, tuple) else entry
            if getattr(target, "hidiffusion_effect", None) == "hidiffusion_raunet":
                found.setdefault(name, []).append(target)
    return found


def text(blocks: tuple[int, ...]) -> str:
    """Blocks as the table above writes them."""
    return ",".join(map(str, blocks))


def logged_plan(logs) -> str:
    return next(m for m in logs.messages(logging.INFO) if m.startswith("[HiDiffusion] HiDiffusion: "))


OFFICIAL = "schedule: official"
SD15_2048 = "schedule: sd15_2048"
SDXL_4096 = "schedule: sdxl_4096"

# (layout, width, height, advanced, schedule key, RAD pair + percents, pool pair + percents, MSW in/out)
CASES = [
    ("sd15", 1024, 1024, None, "sd15_1024", ("3", "8", 0.0, 0.4), None, ("1,2", "9,10,11")),
    ("sd15", 2048, 2048, None, "sd15_2048", ("3", "8", 0.0, 0.7), ("4", "8", 0.0, 0.3), ("1,2", "9,10,11")),
    ("sd15", 2048, 1024, None, "sd15_1024", ("3", "8", 0.0, 0.4), None, ("1,2", "9,10,11")),
    ("sd15", 2048, 2048, OFFICIAL, "sd15_2048", ("3", "8", 0.0, 0.7), ("4", "8", 0.0, 0.3), ("1,2", "9,10,11")),
    ("sd2v", 1536, 1536, None, "sd15_1024", ("3", "8", 0.0, 0.4), None, ("1,2", "9,10,11")),
    ("sdxl", 2048, 2048, None, "sdxl_measured", ("3", "5", 0.0, 0.5), None, ("4,5", "3,4,5")),
    ("sdxl", 4096, 4096, None, "sdxl_measured", ("3", "5", 0.0, 0.5), None, ("4,5", "3,4,5")),
    ("sdxl_small", 2048, 2048, None, "sdxl_measured", ("2", "3", 0.0, 0.5), None, ("3", "2,3")),
    ("sdxl", 2048, 2048, OFFICIAL, "sdxl_2048", ("6", "2", 0.0, 0.16), ("4", "5", 0.16, 0.4), ("4,5", "3,4,5")),
    ("sdxl", 4096, 4096, OFFICIAL, "sdxl_4096", ("6", "2", 0.0, 0.3), ("4", "5", 0.0, 0.7), ("4,5", "3,4,5")),
    ("sdxl_small", 2048, 2048, OFFICIAL, "sdxl_2048", ("4", "1", 0.0, 0.16), ("3", "3", 0.16, 0.4), ("3", "2,3")),
    # an official schedule by name, away from the size it was written for
    ("sd15", 1024, 1024, SD15_2048, "sd15_2048", ("3", "8", 0.0, 0.7), ("4", "8", 0.0, 0.3), ("1,2", "9,10,11")),
    ("sdxl", 2048, 2048, SDXL_4096, "sdxl_4096", ("6", "2", 0.0, 0.3), ("4", "5", 0.0, 0.7), ("4,5", "3,4,5")),
]


@pytest.mark.parametrize(("layout", "width", "height", "advanced", "key", "rad", "pool", "msw"), CASES)
def test_plan_follows_structure_and_schedule(pack, layout, width, height, advanced, key, rad, pool, msw):
    """SD1.x gets the official schedule either way; SDXL the measured one (RAD at the first
    Downsample, no pooling) unless the advanced YAML asks for the official one."""
    plans = pack["ApplyHiDiffusion"]
    module = __import__("sys").modules[plans.__module__]
    plan, _ = module.make_plan(tiny_model(layout), width, height, None, advanced)
    assert plan.active and plan.schedule.key == key
    settings, windows = plan.raunet_settings(), plan.msw_settings()
    assert (text(settings.input_blocks), text(settings.output_blocks), settings.start_time, settings.end_time) == rad
    if pool is None:
        assert settings.ca_start_time == 1.0  # off
    else:
        assert (
            text(settings.ca_input_blocks),
            text(settings.ca_output_blocks),
            settings.ca_start_time,
            settings.ca_end_time,
        ) == pool
    assert (text(windows.input_blocks), text(windows.output_blocks)) == msw
    patched = auto(pack, tiny_model(layout), width, height, advanced)
    assert raunet_patches(patched)


def test_a_schedule_that_does_not_exist_is_refused_by_name(pack):
    message = pack["ApplyHiDiffusion"].validate_inputs(advanced="schedule: fastest")
    assert isinstance(message, str) and "schedule" in message and "measured, official" in message


def test_another_familys_schedule_is_refused_before_sampling(pack):
    """The YAML check cannot know the model; the node's run does, and names this family's schedules."""
    with pytest.raises(
        ValueError, match="HiDiffusion: schedule 'sdxl_4096' is not one of this family's: sd15_1024, sd15_2048"
    ):
        auto(pack, tiny_model("sd15"), 2048, 2048, "schedule: sdxl_4096")


def test_feature_map_sizes_are_reported(pack):
    model = tiny_model("sd15")
    report = pack["HiDiffusionInspect"].execute(model=model, width=2048, height=2048).result[0]
    assert "schedule sd15_2048" in report
    assert "feature maps, width x height (RAD + pool): L0 256x256, L1 32x32, L2 16x16, L3 8x8" in report
    assert "feature maps, width x height (normal): L0 256x256, L1 128x128, L2 64x64, L3 32x32" in report
    odd = pack["HiDiffusionInspect"].execute(model=model, width=1000, height=1496).result[0]
    assert "feature maps, width x height (RAD): L0 125x187, L1 32x47, L2 16x24, L3 8x12" in odd


def test_turbo_and_non_aggressive_options(pack):
    module = __import__("sys").modules[pack["ApplyHiDiffusion"].__module__]
    turbo, _ = module.make_plan(tiny_model("sdxl"), 2048, 2048, None, "turbo: true")
    assert turbo.schedule.key == "sdxl_turbo_1024" and turbo.rad_pair is None and turbo.pool_pair == (4, 5)
    calm, _ = module.make_plan(tiny_model("sdxl"), 2048, 2048, None, "aggressive: false")
    assert calm.rad_pair is None and calm.raunet_settings().ca_start_time == 0.0


@pytest.mark.parametrize(("layout", "size"), [("sd15", 512), ("sd15", 320), ("sdxl", 1024), ("sd2v", 768)])
def test_native_size_is_a_no_op_and_says_so(pack, logs, layout, size):
    model = tiny_model(layout)
    assert auto(pack, model, size, size) is model
    assert "at or below the native" in logged_plan(logs) and "nothing is patched" in logged_plan(logs)


def test_native_resolution_comes_from_the_model_or_advanced(pack):
    module = __import__("sys").modules[pack["ApplyHiDiffusion"].__module__]
    assert module.make_plan(tiny_model("sd2v"), 1024, 1024, None, None)[0].native_latent == 96
    assert module.make_plan(tiny_model("sd15"), 1024, 1024, None, None)[0].native_latent == 64
    forced, _ = module.make_plan(tiny_model("sd15"), 1024, 1024, None, "native_resolution: 1024")
    assert not forced.active


def test_a_connected_latent_sets_the_size(pack):
    model = tiny_model("sd15")
    latent = {"samples": torch.zeros(1, 4, 64, 64)}
    assert (
        pack["ApplyHiDiffusion"]
        .execute(model=model, width=4096, height=4096, raunet=True, msw_msa=True, latent=latent)
        .result[0]
        is model
    )


def test_unsupported_model_is_refused_by_name(pack):
    with pytest.raises(
        ValueError, match="HiDiffusion applies to SD1.x/SD2.x, SDXL UNets; this model is Flux is not a UNet"
    ):
        auto(pack, tiny_flux(), 2048, 2048)


@pytest.mark.parametrize("advanced", ["turbo: maybe", "native_resolution: big", "speed: 2", "[1, 2]"])
def test_bad_advanced_yaml_is_refused(pack, advanced):
    message = pack["ApplyHiDiffusion"].validate_inputs(advanced=advanced)
    assert isinstance(message, str) and ("advanced" in message or "turbo" in message)


def test_toggles_select_the_effects(pack):
    model = tiny_model("sd15")
    only_msw = auto(pack, model, 1024, 1024, raunet=False)
    assert not raunet_patches(only_msw) and replaces_of(only_msw)
    only_raunet = auto(pack, model, 1024, 1024, msw_msa=False)
    assert raunet_patches(only_raunet) and not replaces_of(only_raunet)


def test_auto_equals_the_advanced_nodes_set_by_hand(pack, logs):
    """4x the native area of the tiny SD1.5 layout: the same sampling as ApplyRAUNet +
    ApplyMSWMSAAttention with the blocks and times the auto node logged."""
    model = tiny_model("sd15")
    automatic = auto(pack, model, 1024, 1024)
    plan = logged_plan(logs)
    assert "RAD/RAU: input 3 -> output 8, percent 0-0.4" in plan
    assert "MSW-MSA: input 1,2 / output 9,10,11, every step" in plan
    assert "any call at or below the native 512px runs unpatched (native gate, per call)" in plan
    by_hand = (
        pack["ApplyRAUNet"]
        .execute(
            model=model,
            input_blocks="3",
            output_blocks="8",
            time_mode="percent",
            start_time=0.0,
            end_time=0.4,
            upscale_mode="nearest",
            ca_start_time=1.0,
            ca_end_time=1.0,
            ca_input_blocks="",
            ca_output_blocks="",
            ca_upscale_mode="bicubic",
            ca_downscale_mode="avg_pool2d",
            ca_downscale_factor=2.0,
            two_stage_upscale_mode="disabled",
        )
        .result[0]
    )
    by_hand = (
        pack["ApplyMSWMSAAttention"]
        .execute(
            model=by_hand,
            input_blocks="1,2",
            middle_blocks="",
            output_blocks="9,10,11",
            time_mode="percent",
            start_time=0.0,
            end_time=1.0,
        )
        .result[0]
    )
    # cfg 1 (one forward per step) keeps this 128x128 run short on a CPU
    a = sample(automatic, "sd15", 128, 128, steps=2, cfg=1.0, seed=4)
    b = sample(by_hand, "sd15", 128, 128, steps=2, cfg=1.0, seed=4)
    assert torch.equal(a, b)
    assert raunet_patches(automatic) and replaces_of(automatic)


# --- Simple nodes on other layouts ------------------------------------------------------


def test_simple_nodes_place_presets_on_other_layouts(pack, logs):
    small = tiny_model("sdxl_small")
    msw = pack["ApplyMSWMSAAttentionSimple"].execute(model_type="auto", model=small).result[0]
    assert sorted(replaces_of(msw)) == [("input", 3), ("output", 2), ("output", 3)]
    rau = (
        pack["ApplyRAUNetSimple"]
        .execute(
            model=small,
            model_type="auto",
            res_mode="ultra (over 2048)",
            upscale_mode="default",
            ca_upscale_mode="default",
        )
        .result[0]
    )
    assert any("in/out blocks [2 / 3]" in m and "CA in/out blocks [3 / 3]" in m for m in logs.messages())
    assert torch.isfinite(sample(rau, "sdxl_small", 32, 32, steps=2)).all()
    sd2 = pack["ApplyMSWMSAAttentionSimple"].execute(model_type="SD15", model=tiny_model("sd2v")).result[0]
    assert sorted(replaces_of(sd2)) == [("input", 1), ("input", 2), ("output", 9), ("output", 10), ("output", 11)]


def test_inspect_flop_estimate_agrees_with_a_counted_call(pack):
    """The analytic estimate of the Inspect report against torch's FlopCounterMode on a real
    forward of the tiny SD1.5 UNet (77 text tokens, batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = __import__("sys").modules[pack["ApplyHiDiffusion"].__module__]
    cost = __import__("sys").modules[module.__name__.replace("comfyui.auto_nodes", "core.cost")]
    model = tiny_model("sd15")
    unet_module = model.get_model_object("diffusion_model")
    unet = module.unet_map_of(model)
    costs = cost.unet_costs(unet_module, unet)
    plan_module = __import__("sys").modules[module.__name__.replace("comfyui.auto_nodes", "core.plan")]
    latent = (40, 24)
    estimate = cost.estimate_flops(unet, costs, plan_module.level_sizes(unet.levels, latent))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet_module(
            torch.zeros(1, 4, *latent), torch.tensor([500.0]), context=torch.zeros(1, 77, 64), transformer_options={}
        )
    assert abs(estimate / counter.get_total_flops() - 1) < 0.1
    report = pack["HiDiffusionInspect"].execute(model=model, width=2048, height=2048).result[0]
    assert "estimated FLOPs per call (RAD + pool, with MSW-MSA)" in report and "fewer than unpatched" in report


@pytest.mark.parametrize(
    ("family", "advanced", "grid", "side"),
    [
        ("sd15", None, "native", 64),  # the measured SD1.x schedule's windows (quality lab)
        ("sd15", "schedule: official", "2x2", None),
        ("sd15", "window_grid: native", "native", 64),
        ("sd15", "window_grid: native\nnative_resolution: 1024", "native", 128),
        ("sd15", "window_grid: 4X3", "4x3", None),
        ("sdxl", None, "native", 64),  # the measured SDXL schedule's windows (quality lab)
        ("sdxl", "window_grid: 2x2", "2x2", None),
        ("sdxl", "schedule: official", "2x2", None),
    ],
)
def test_the_window_grid_reaches_msw_msa_with_the_plans_native_size(pack, family, advanced, grid, side):
    patched = auto(pack, tiny_model(family), 2048, 2048, advanced)
    patches = {p for p in replaces_of(patched).values() if type(p).__name__ == "MswMsaAttention"}
    assert len(patches) == 1
    patch = patches.pop()
    assert patch.window_grid == grid
    if side is not None:
        assert set(patch.native_sides.values()) == {side}  # the windowed blocks are all on one level
    report = pack["HiDiffusionInspect"].execute(model=tiny_model(family), width=2048, height=2048, advanced=advanced)
    assert f"every step, window_grid {grid}\n" in report.result[0]  # what it applies is what it reports


def test_a_bad_window_grid_in_advanced_is_refused_naming_it(pack):
    with pytest.raises(ValueError, match="advanced: window_grid must be 2x2"):
        auto(pack, tiny_model("sd15"), 2048, 2048, "window_grid: tiles")
