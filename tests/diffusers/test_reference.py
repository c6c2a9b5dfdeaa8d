# ruff: noqa: E402 (diffusers is imported after the skip)
"""Our hooks against the official operators, written here from method.md §1.1 and §2.

The reference patches the UNet the way the official code acts (only inside this test):
RAD = the Downsample's own conv with stride 4, padding 2, dilation 2; RAU = the stock
nearest upsample to the skip size (forced, as the official ``num_upsamplers += 12``
does); pool = ``avg_pool2d((2, 2), ceil_mode=True)`` after the first pair of the pooled
level, restored with bicubic to the stored size after the mirrored pair; ControlNet
residuals bicubic-resized to the feature maps they are added to.
"""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import contextlib
import math

import torch
import torch.nn.functional as F  # noqa: N812
from reference import naive_windowed

from hidiff.diffusers import apply_hidiffusion, remove_hidiffusion
from hidiff.diffusers.install import shift_indices
from hidiff.diffusers.structure import read_layout


def _wrap_forward(module, after):
    original = module.forward

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        return (after(out[0]), *out[1:]) if isinstance(out, tuple) else after(out)

    module.forward = forward


@contextlib.contextmanager
def official_operators(unet, rad: bool, pool: bool):
    """The official RAU-Net operators on ``unet`` while the block runs."""
    layout = read_layout(unet)
    conv = unet.down_blocks[layout.rad_level].downsamplers[0].conv
    saved = (conv.stride, conv.padding, conv.dilation)
    pooled_from = {}
    pool_module = unet.down_blocks[layout.pool_level].attentions[0]
    restore_module = unet.up_blocks[layout.mirror(layout.pool_level)].attentions[1]
    try:
        if rad:
            conv.stride, conv.padding, conv.dilation = (4, 4), (2, 2), (2, 2)
        unet.num_upsamplers += 12
        if pool:

            def do_pool(h):
                pooled_from["size"] = h.shape[-2:]
                return F.avg_pool2d(h, kernel_size=(2, 2), ceil_mode=True)

            _wrap_forward(pool_module, do_pool)
            _wrap_forward(restore_module, lambda h: F.interpolate(h, size=pooled_from["size"], mode="bicubic"))
        yield
    finally:
        conv.stride, conv.padding, conv.dilation = saved
        unet.num_upsamplers -= 12
        for module in (pool_module, restore_module):
            vars(module).pop("forward", None)


class SkipAttention:
    """An attention processor that returns its input: keeps 256x256 maps cheap on a CPU."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return hidden_states


def call(unet, sample, timestep, **kwargs):
    with torch.no_grad():
        return unet(sample, timestep, return_dict=False, **kwargs)[0]


def unet_inputs(helpers, family: str, height: int, width: int, batch: int = 1) -> dict:
    torch.manual_seed(7)
    inputs = {"sample": torch.randn(batch, 4, height, width), "encoder_hidden_states": torch.randn(batch, 8, 32)}
    if family == "sdxl":
        inputs["added_cond_kwargs"] = helpers.sdxl_added_cond(batch)
    return inputs


def schedule(helpers, steps: int):
    """A scheduler set for ``steps`` steps whose run starts at step 0 (``begin_index``),
    so a single call at any step is located without the run's first call."""
    scheduler = helpers.scheduler("euler")
    scheduler.set_timesteps(steps)
    scheduler.set_begin_index(0)
    return scheduler


def compare(helpers, unet, family, size, step, rad, pool, steps=10):
    scheduler = schedule(helpers, steps)
    timestep = scheduler.timesteps[step]
    inputs = unet_inputs(helpers, family, *size)
    sample = inputs.pop("sample")
    apply_hidiffusion(unet, apply_window_attn=False, scheduler=scheduler)
    ours = call(unet, sample, timestep, **inputs)
    remove_hidiffusion(unet)
    with official_operators(unet, rad, pool):
        expected = call(unet, sample, timestep, **inputs)
    assert ours.shape == sample.shape
    torch.testing.assert_close(ours, expected)
    return ours


@pytest.mark.parametrize("size", [(32, 32), (40, 56), (30, 46)])
def test_sd_rad_rau_equals_official(helpers, size):
    """sd15_1024, step 0 of 10: RAD + RAU. 40x56 is divisible by 8 but its RAD chain is not
    (10x14 -> 5x7 -> 3x4), so the stock x2 upsample would not fit: RAU must hit the skip."""
    compare(helpers, helpers.sd_unet(), "sd", size, step=0, rad=True, pool=False)


def test_sd_normal_step_equals_stock(helpers):
    unet = helpers.sd_unet()
    compare(helpers, unet, "sd", (32, 32), step=5, rad=False, pool=False)


@pytest.mark.parametrize(("step", "rad", "pool"), [(0, True, False), (1, False, True), (5, False, False)])
def test_sdxl_phases_equal_official(helpers, step, rad, pool):
    """sdxl_2048 aggressive, 10 steps: RAD at step 0, pooling at steps 1-3, then stock."""
    compare(helpers, helpers.sdxl_unet(), "sdxl", (32, 40), step=step, rad=rad, pool=pool)


def test_sd_2048_rad_and_pool_together(helpers):
    """sd15_2048 (latent 256): RAD 256 -> 64, pool 64 -> 32, mid 8 (method.md §1.3)."""
    unet = helpers.sd_unet(channels=(8, 16, 16, 16))
    unet.set_attn_processor(SkipAttention())
    mids = []
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: mids.append(out.shape[-1]))
    compare(helpers, unet, "sd", (256, 256), step=0, rad=True, pool=True)
    handle.remove()
    assert mids == [8, 8]


def test_sdxl_4096_rad_and_pool_together(helpers):
    """sdxl_4096 (latent 512), step 0: pool 256 -> 128 in down_blocks.1, RAD 128 -> 32."""
    unet = helpers.sdxl_unet(channels=(8, 16, 16))
    unet.set_attn_processor(SkipAttention())
    mids = []
    handle = unet.mid_block.register_forward_hook(lambda m, a, out: mids.append(out.shape[-1]))
    compare(helpers, unet, "sdxl", (512, 512), step=0, rad=True, pool=True)
    handle.remove()
    assert mids == [32, 32]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_controlnet_residuals_resized_like_official(helpers, family):
    """Residuals shaped for the stock sizes are bicubic-resized to the actual skips."""
    unet = helpers.sd_unet() if family == "sd" else helpers.sdxl_unet()
    scheduler = schedule(helpers, 10)
    inputs = unet_inputs(helpers, family, 32, 32)
    sample = inputs.pop("sample")
    down, mid = _residuals(unet, sample, scheduler.timesteps[0], inputs)
    apply_hidiffusion(unet, apply_window_attn=False, scheduler=scheduler)
    actual = _skip_sizes(unet, sample, scheduler.timesteps[0], inputs)
    ours = call(unet, sample, scheduler.timesteps[0], **inputs, **_as_kwargs(down, mid))
    remove_hidiffusion(unet)
    resized_down = [F.interpolate(r, size=s, mode="bicubic") for r, s in zip(down, actual["skips"], strict=True)]
    resized_mid = F.interpolate(mid, size=actual["mid"], mode="bicubic")
    with official_operators(unet, rad=True, pool=False):
        expected = call(unet, sample, scheduler.timesteps[0], **inputs, **_as_kwargs(resized_down, resized_mid))
    torch.testing.assert_close(ours, expected)


def _as_kwargs(down, mid):
    return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}


def _residuals(unet, sample, timestep, inputs):
    """Random residuals with the stock skip shapes (as a ControlNet produces them)."""
    stock = _skip_sizes(unet, sample, timestep, inputs)
    generator = torch.Generator().manual_seed(9)
    channels = _skip_channels(unet)
    down = [torch.randn(1, c, *s, generator=generator) for c, s in zip(channels, stock["skips"], strict=True)]
    mid = torch.randn(1, channels[-1], *stock["mid"], generator=generator)
    return down, mid


def _skip_channels(unet):
    channels = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        channels += [r.out_channels for r in block.resnets]
        if block.downsamplers:
            channels.append(block.downsamplers[0].out_channels)
    return channels


def _skip_sizes(unet, sample, timestep, inputs):
    """The size of every skip and of the mid output in one call, read with our own hooks."""
    sizes = {"skips": [], "mid": None}
    handles = [unet.conv_in.register_forward_hook(lambda m, a, out: sizes["skips"].append(tuple(out.shape[-2:])))]
    for block in unet.down_blocks:
        handles.append(
            block.register_forward_hook(lambda m, a, out: sizes["skips"].extend(tuple(r.shape[-2:]) for r in out[1]))
        )
    handles.append(unet.mid_block.register_forward_hook(lambda m, a, out: sizes.update(mid=tuple(out.shape[-2:]))))
    call(unet, sample, timestep, **inputs)
    for handle in handles:
        handle.remove()
    return sizes


# -------------------------------------------------------------------------------- MSW-MSA


def windowed_first_attention(helpers, size, **options):
    """attn1 of down_blocks.0.attentions.0, its input and output in one call of a windowed
    UNet (window_seed 3, step 1), and the shift index that call drew."""
    unet = helpers.sd_unet()
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    captured = {}

    def capture(module, args, output):
        captured["x"], captured["y"] = args[0], output

    handle = attn.register_forward_hook(capture)
    scheduler = schedule(helpers, 4)
    inputs = unet_inputs(helpers, "sd", *size)
    sample = inputs.pop("sample")
    apply_hidiffusion(unet, scheduler=scheduler, window_seed=3, **options)
    call(unet, sample, scheduler.timesteps[1], **inputs)
    remove_hidiffusion(unet)
    handle.remove()
    return attn, captured["x"], captured["y"], shift_indices(3, 1, count=5)[0]


@pytest.mark.parametrize("size", [(32, 32), (25, 37)])
def test_window_attention_equals_naive_reference(helpers, size):
    """attn1 of down_blocks.0.attentions.0 under MSW-MSA equals softmax attention inside
    each 2x2 shifted window (tests/reference.py), on the layer's own projections; odd
    grids are exact (windows of ceil and floor size), not resampled."""
    attn, x, y, shift = windowed_first_attention(helpers, size)
    captured = {"y": y}
    with torch.no_grad():
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        expected = attn.to_out[0](naive_windowed(q, k, v, size[0], size[1], shift, heads=attn.heads))
    torch.testing.assert_close(captured["y"], expected, rtol=1e-5, atol=1e-5)
    assert math.prod(size) == x.shape[1]


@pytest.mark.parametrize(
    ("options", "size", "grid"),
    [
        ({"window_grid": "3x4"}, (25, 37), (3, 4)),
        ({"window_grid": "native", "native_resolution": 64}, (32, 32), (4, 4)),  # an 8-token native grid
        ({"window_grid": "native", "native_resolution": 64}, (25, 37), (4, 5)),
    ],
)
def test_other_window_grids_equal_the_naive_reference_of_that_grid(helpers, options, size, grid):
    """``window_grid`` RxC and native on the layer's own projections: naive windowed attention
    on the expected grid of windows, far from the official 2x2."""
    attn, x, y, shift = windowed_first_attention(helpers, size, gate_native=False, **options)
    captured = {"y": y}
    with torch.no_grad():
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        expected = naive_windowed(q, k, v, size[0], size[1], shift, heads=attn.heads, rows=grid[0], cols=grid[1])
        official = naive_windowed(q, k, v, size[0], size[1], shift, heads=attn.heads)
        expected, official = attn.to_out[0](expected), attn.to_out[0](official)
    torch.testing.assert_close(captured["y"], expected, rtol=1e-5, atol=1e-5)
    assert (expected - official).abs().max() >= 1e-4  # ten times the tolerance: the grid is seen


def test_a_bad_window_grid_is_refused_naming_the_option(helpers):
    with pytest.raises(ValueError, match="window_grid must be 2x2 .* got '2x'"):
        apply_hidiffusion(helpers.sd_unet(), window_grid="2x")
