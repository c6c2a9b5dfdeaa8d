"""``python -m hidiff bench`` inside real ComfyUI, on tiny models with the real block layouts.

The benchmark's own code runs unchanged; only the model specs are swapped for tiny UNets
of the same layouts (narrow channels, fewer SDXL transformer blocks), so a run takes
seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from PIL import Image

from hidiff.bench import cli, flops, models, unet_call
from hidiff.bench.comfy_env import comfyui_version

TINY = {
    "sd15": replace(
        models.SD15,
        title="tiny SD1.5",
        unet=dict(models.SD15_UNET, model_channels=32, context_dim=64),
        native_resolution=128,  # a 16-token native grid: msw-native uses 2x3 windows on the 25x37 latent
    ),
    "sdxl": replace(
        models.SDXL,
        title="tiny SDXL",
        unet=dict(
            models.SDXL_UNET,
            model_channels=32,
            context_dim=64,
            num_head_channels=16,
            transformer_depth=[0, 0, 2, 2, 1, 1],
            transformer_depth_middle=1,
            transformer_depth_output=[0, 0, 0, 2, 2, 2, 1, 1, 1],
        ),
        native_resolution=64,  # a 4-token native grid at level 1: 7x5 windows on its 25x17 grid
    ),
}
SIZES = {"sd15": (296, 200), "sdxl": (264, 392)}
"""Odd latents (37x25, 33x49): uneven windows and RAU-Net's odd-size paths are counted too."""


def silent(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def counts(pack) -> dict:
    """For each layout: the benchmark's rows with FLOPs counted on shapes only, and on real compute."""
    found = {}
    for family, spec in TINY.items():
        base = models.build_model(spec, seed=0)
        found[family] = {
            mode: unet_call.run(
                pack,
                base,
                spec,
                size=SIZES[family],
                configs=list(unet_call.CONFIG_NAMES),
                batch=1,
                seed=0,
                warmup=0,
                repeats=1,
                count_flops=True,
                progress=silent,
                shapes_only=mode == "shapes",
            )
            for mode in ("shapes", "real")
        }
    return found


@pytest.mark.parametrize("family", sorted(TINY))
def test_shape_only_count_equals_torchs_count_of_the_real_call(counts, family):
    shapes, real = counts[family]["shapes"], counts[family]["real"]
    assert [r.name for r in shapes] == list(unet_call.CONFIG_NAMES)
    for fast, slow in zip(shapes, real):
        assert fast.available and slow.available, (fast.reason, slow.reason)
        assert fast.flops_by_op == slow.flops_by_op and fast.total_flops > 0
        assert fast.grids == slow.grids


@pytest.mark.parametrize("family", sorted(TINY))
def test_flop_ratios_agree_with_the_independent_count_within_two_percent(counts, family):
    def ratios(rows):
        off = rows[0].total_flops
        return {r.name: off / r.total_flops for r in rows}

    fast, slow = ratios(counts[family]["shapes"]), ratios(counts[family]["real"])
    for name in unet_call.CONFIG_NAMES:
        assert math.isclose(fast[name], slow[name], rel_tol=0.02)
    assert fast["both"] > fast["raunet"] > 1.0 and fast["msw"] > 1.0


@pytest.mark.parametrize("family", sorted(TINY))
def test_counted_attention_equals_the_hand_count_and_the_patches_acted(counts, family):
    rows = {r.name: r for r in counts[family]["shapes"]}
    for row in rows.values():
        assert row.flops_of("attention") == row.attention_expected > 0
        assert row.seconds and row.seconds[0] > 0 and row.peak_memory_bytes > 0
    assert any(g["windowed"] for g in rows["msw"].grids) and not any(g["windowed"] for g in rows["off"].grids)
    # more, smaller windows than 2x2: less attention, the same grids
    assert rows["msw-native"].grids == rows["msw"].grids
    assert rows["msw-native"].flops_of("attention") < rows["msw"].flops_of("attention")
    assert rows["raunet"].grids != rows["off"].grids
    assert rows["off"].rel_diff_vs_off == 0.0
    for name in ("msw", "msw-native", "raunet", "both"):
        assert rows[name].rel_diff_vs_off > 0.0


def test_attention_kinds_follow_comfyuis_kernels():
    assert flops.op_kind("aten.convolution.default") == "conv"
    assert flops.op_kind("aten.addmm") == "linear"
    assert flops.op_kind("aten.baddbmm") == "attention"
    assert flops.op_kind("aten._scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert flops.op_kind("aten.relu") == "other"


def test_the_command_runs_end_to_end_and_writes_its_report(pack, monkeypatch, tmp_path, capsys):
    """``bench`` through its command-line entry, in this ComfyUI process, with the tiny SDXL spec."""
    monkeypatch.setattr(cli, "MODELS", {"sdxl": TINY["sdxl"]})
    chart, report = tmp_path / "steps.png", tmp_path / "out" / "bench.json"
    code = cli.main(
        ["--model", "sdxl", "--size", "256x256", "--schedule-size", "192x256", "--steps", "4"]
        + ["--chart", str(chart), "--json", str(report)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "tiny SDXL" in text and "= hand count" in text and "Whole run: 192x256 px, 4 steps" in text
    document = json.loads(report.read_text())
    rows = {row["name"]: row for row in document["unet_call"]}
    assert set(rows) == set(unet_call.DEFAULT_CONFIGS) and all(row["available"] for row in rows.values())
    assert rows["both"]["flop_ratio_vs_off"] > 1.0 and rows["both"]["attention_matches_hand_count"] is True
    assert document["device_type"] == "cpu" and document["latent"] == [32, 32]
    # on a CPU ComfyUI never starts dynamic VRAM: the legacy loader, named with the version
    assert document["loader"] == "ModelPatcher" and document["comfyui"] == comfyui_version()
    assert f"ComfyUI {comfyui_version()} (model loader ModelPatcher, attention " in text
    run = document["schedule"]
    assert [len(run["step_seconds"][name]) for name in ("off", "simple")] == [4, 4]
    assert run["speedup"] == pytest.approx(run["total_s"]["off"] / run["total_s"]["simple"])
    assert Image.open(chart).size == (720, 360)


def test_json_to_stdout_replaces_the_tables(pack, monkeypatch, capsys):
    monkeypatch.setattr(cli, "MODELS", {"sd15": TINY["sd15"]})
    assert cli.main(["--size", "128x128", "--configs", "off,msw", "--no-schedule", "--no-flops", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in document["unet_call"]] == ["off", "msw"]
    assert document["unet_call"][1]["gflop"] is None and "schedule" not in document


def test_repeats_zero_counts_flops_without_timing(pack, monkeypatch, capsys):
    monkeypatch.setattr(cli, "MODELS", {"sd15": TINY["sd15"]})
    assert cli.main(["--size", "128x128", "--configs", "off,raunet", "--repeats", "0", "--no-schedule", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["unet_call"]
    assert [row["seconds"] for row in rows] == [[], []] and rows[1]["flop_ratio_vs_off"] > 1.0


def test_a_failing_node_is_reported_in_its_row_and_the_others_still_run(pack, monkeypatch):
    spec = replace(TINY["sd15"], msw_input="1,x")
    base = models.build_model(spec, seed=0)
    rows = unet_call.run(
        pack, base, spec, size=(128, 128), configs=["off", "msw"], batch=1, seed=0, warmup=0, repeats=1,
        count_flops=False, progress=silent,
    )  # fmt: skip
    assert rows[0].available and not rows[1].available
    assert "input_blocks" in rows[1].reason
