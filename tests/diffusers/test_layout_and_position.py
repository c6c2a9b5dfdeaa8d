# ruff: noqa: E402 (diffusers is imported after the skip)
"""The UNet layout reader and the step position of a call, without sampling."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from diffusers import HeunDiscreteScheduler, UNet2DConditionModel

from hidiff.core.unet_map import Family
from hidiff.diffusers import HiDiffusionOptions, UnsupportedModelError, apply_hidiffusion
from hidiff.diffusers.position import RunPosition, ScheduleReader, matching_positions, pick_position, run_position
from hidiff.diffusers.structure import read_layout


def test_sd_layout_from_structure(helpers):
    layout = read_layout(helpers.sd_unet())
    assert layout.family is Family.SD15
    assert (layout.levels, layout.attention_level, layout.rad_level, layout.pool_level) == (4, 0, 0, 1)
    assert layout.mirror(layout.attention_level) == 3
    assert layout.restore_pair == 1
    assert layout.native_latent == 16


def test_sdxl_layout_from_structure(helpers):
    layout = read_layout(helpers.sdxl_unet(in_channels=9))
    assert layout.family is Family.SDXL
    assert (layout.levels, layout.attention_level, layout.rad_level, layout.pool_level) == (3, 1, 1, 1)
    assert layout.mirror(layout.attention_level) == 1
    assert layout.in_channels == 9


def test_two_level_unet_is_refused_with_its_layout():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=8,
    )
    with pytest.raises(UnsupportedModelError, match=r"2 down blocks \(CrossAttnDownBlock2D, DownBlock2D\)"):
        read_layout(unet)


def test_attention_only_deep_is_refused():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=8,
    )
    with pytest.raises(UnsupportedModelError, match="self-attention from level 2"):
        read_layout(unet)


def test_not_a_unet_is_named():
    with pytest.raises(UnsupportedModelError, match="Linear is not a UNet2DConditionModel"):
        apply_hidiffusion(torch.nn.Linear(2, 2))


def test_unknown_option_lists_valid_ones(helpers):
    with pytest.raises(TypeError, match="unknown option.*bogus.*valid options: gate_native"):
        apply_hidiffusion(helpers.sd_pipeline(), bogus=1)


def test_bare_unet_raunet_needs_scheduler(helpers):
    unet = helpers.sd_unet()
    with pytest.raises(ValueError, match="scheduler="):
        apply_hidiffusion(unet)
    apply_hidiffusion(unet, apply_raunet=False)  # MSW-MSA alone needs no schedule


def test_option_checks():
    with pytest.raises(ValueError, match="native_resolution"):
        HiDiffusionOptions.from_kwargs({"native_resolution": 8})
    with pytest.raises(TypeError, match="window_seed"):
        HiDiffusionOptions.from_kwargs({"window_seed": 1.5})
    with pytest.raises(ValueError, match="schedule must be one of measured, official"):
        HiDiffusionOptions.from_kwargs({"schedule": "fast"})


# ----------------------------------------------------------------------------- position


def test_repeated_timestep_uses_step_index():
    values = [999.0, 800.0, 800.0, 600.0, 600.0]
    assert matching_positions(values, 800.0) == [1, 2]
    assert pick_position([1, 2], 2) == 2
    assert pick_position([1, 2], None) == 1
    assert run_position(7, 5, 15) == RunPosition(2, 10)


class FakeScheduler:
    """Just what the reader looks at: timesteps, and optionally begin/step index."""

    def __init__(self, timesteps, begin_index=None, step_index=None):
        self.timesteps = torch.tensor(timesteps, dtype=torch.float32)
        self.begin_index, self.step_index = begin_index, step_index


def test_img2img_suffix_with_begin_index():
    scheduler = FakeScheduler(list(range(900, -1, -100)), begin_index=4)
    reader = ScheduleReader()
    assert reader.locate(torch.tensor(500.0), scheduler) == RunPosition(0, 6)
    assert reader.locate(torch.tensor(200.0), scheduler) == RunPosition(3, 6)


def test_img2img_suffix_without_begin_index_uses_first_call():
    scheduler = FakeScheduler(list(range(900, -1, -100)))
    reader = ScheduleReader()
    assert reader.locate(500, scheduler) == RunPosition(0, 6)
    assert reader.locate(100, scheduler) == RunPosition(4, 6)


def test_text_to_image_without_begin_index_starts_at_first_call():
    scheduler = FakeScheduler(list(range(900, -1, -100)))
    reader = ScheduleReader()
    assert reader.locate(900, scheduler) == RunPosition(0, 10)
    assert reader.locate(300, scheduler) == RunPosition(6, 10)


def test_new_schedule_tensor_is_a_new_run():
    reader = ScheduleReader()
    first = FakeScheduler([900, 700, 500, 300, 100])
    assert reader.locate(500, first) == RunPosition(0, 3)  # interrupted after this call
    second = FakeScheduler([900, 700, 500, 300, 100])
    assert reader.locate(900, second) == RunPosition(0, 5)


def test_heun_positions_follow_real_scheduler():
    scheduler = HeunDiscreteScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(4)
    reader = ScheduleReader()
    sample = torch.zeros(1, 1, 2, 2)
    steps = []
    for t in scheduler.timesteps:
        steps.append(reader.locate(t, scheduler).step)
        scheduler.step(torch.zeros_like(sample), t, sample)
    assert steps == list(range(len(scheduler.timesteps)))
