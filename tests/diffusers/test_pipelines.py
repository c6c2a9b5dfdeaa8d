# ruff: noqa: E402 (diffusers is imported after the skip)
"""Whole pipelines: exact removal, feature-map sizes per step, runs that restart or fail."""

from __future__ import annotations

import random

import numpy as np
import pytest
import snapshot

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

import torch
from diffusers import (
    HeunDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
)

from hidiff.diffusers import apply_hidiffusion, remove_hidiffusion
from hidiff.diffusers.install import ATTRIBUTE


class SizeRecorder:
    """Forward hooks of the test's own: the mid block's output size of every UNet call,
    and the sizes at the modules named in ``watch`` (module name -> 'in' or 'out')."""

    def __init__(self, unet, watch: dict[str, str] | None = None):
        self.mid: list[int] = []
        self.seen: dict[str, list[tuple[int, int]]] = {name: [] for name in watch or {}}
        modules = dict(unet.named_modules())
        self.handles = [unet.mid_block.register_forward_hook(self._mid)]
        for name, where in (watch or {}).items():
            hook = self._watcher(name, where)
            self.handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))

    def _mid(self, module, args, output):
        self.mid.append(int(output.shape[-1]))

    def _watcher(self, name, where):
        def hook(module, args, kwargs, output):
            if where == "in":
                tensor = args[0] if args else kwargs["hidden_states"]
            else:
                tensor = output[0] if isinstance(output, tuple) else output
            self.seen[name].append(tuple(tensor.shape[-2:]))

        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def leftovers(unet) -> list[str]:
    """Anything HiDiffusion could have left on the UNet or its modules."""
    found = [name for name, m in unet.named_modules() if hasattr(m, "_diffusers_hook") or "forward" in vars(m)]
    found += [f"{name} hooks" for name, m in unet.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    return found + ([ATTRIBUTE] if hasattr(unet, ATTRIBUTE) else [])


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_apply_sample_remove_is_bit_identical(helpers, family):
    pipe = helpers.sd_pipeline() if family == "sd" else helpers.sdxl_pipeline()
    prompt = helpers.sd_prompt() if family == "sd" else helpers.sdxl_prompt()
    steps = 7
    baseline = helpers.run(pipe, prompt, steps)
    apply_hidiffusion(pipe)
    active = helpers.run(pipe, prompt, steps)
    remove_hidiffusion(pipe)
    after = helpers.run(pipe, prompt, steps)
    assert not torch.equal(active, baseline)
    assert torch.isfinite(active).all()
    assert torch.equal(after, baseline)
    assert leftovers(pipe.unet) == []


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_apply_sample_remove_leave_the_whole_unet_and_every_generator_as_they_were(helpers, family):
    """A whole-state snapshot (tests/snapshot.py: every module's attributes, hooks and
    attention processors, the weights, and torch's, random's and numpy's generators)."""
    pipe = helpers.sd_pipeline() if family == "sd" else helpers.sdxl_pipeline()
    prompt = helpers.sd_prompt() if family == "sd" else helpers.sdxl_prompt()
    seed_everything(5)
    helpers.run(pipe, prompt, 3)
    rng_after_plain = snapshot.rng_state()
    seed_everything(5)
    before = snapshot.of_module(pipe.unet)
    apply_hidiffusion(pipe)
    assert snapshot.rng_state() == before.rng
    assert snapshot.of_module(pipe.unet, rng=False).fields != before.fields  # applying is seen
    helpers.run(pipe, prompt, 3)
    remove_hidiffusion(pipe)
    assert snapshot.rng_state() == rng_after_plain
    assert before.differences(snapshot.of_module(pipe.unet, rng=False)) == []


def test_apply_twice_equals_once_and_remove_is_idempotent(helpers):
    pipe, prompt = helpers.sd_pipeline(), helpers.sd_prompt()
    apply_hidiffusion(pipe)
    once = helpers.run(pipe, prompt, 4)
    apply_hidiffusion(pipe)
    twice = helpers.run(pipe, prompt, 4)
    assert torch.equal(once, twice)
    remove_hidiffusion(pipe)
    remove_hidiffusion(pipe)
    assert leftovers(pipe.unet) == []


def test_native_gate(helpers):
    """At the native size (sample_size 16 -> 32 px) nothing happens unless gate_native=False."""
    pipe, prompt = helpers.sd_pipeline(), helpers.sd_prompt()
    baseline = helpers.run(pipe, prompt, 4, size=32)
    apply_hidiffusion(pipe)
    assert torch.equal(helpers.run(pipe, prompt, 4, size=32), baseline)
    apply_hidiffusion(pipe, gate_native=False)
    assert not torch.equal(helpers.run(pipe, prompt, 4, size=32), baseline)


def test_sd_sizes_per_step(helpers):
    """SD1.5 below 2048 px (sd15_1024): RAD for int(0.4 N) steps: 32 -> 8 at down_blocks.0,
    mid 2 instead of 4, and the mirrored upsampler goes 8 -> 32 (nearest to the skip size)."""
    pipe, prompt = helpers.sd_pipeline(), helpers.sd_prompt()
    apply_hidiffusion(pipe, apply_window_attn=False)
    sizes = SizeRecorder(
        pipe.unet, {"down_blocks.0.downsamplers.0": "out", "up_blocks.2.upsamplers.0": "out", "up_blocks.2": "in"}
    )
    helpers.run(pipe, prompt, 10)
    sizes.close()
    assert sizes.mid == [2] * 4 + [4] * 6
    assert sizes.seen["down_blocks.0.downsamplers.0"] == [(8, 8)] * 4 + [(16, 16)] * 6
    assert sizes.seen["up_blocks.2"] == [(8, 8)] * 4 + [(16, 16)] * 6
    assert sizes.seen["up_blocks.2.upsamplers.0"] == [(32, 32)] * 10


def test_sdxl_sizes_per_step(helpers):
    """SDXL below 4096 px, aggressive: RAD for int(8/50 N) steps (down_blocks.1: 16 -> 4),
    then pooling until int(0.4 N) (pair 1 of down_blocks.1 at 8, restored in up_blocks.1)."""
    pipe, prompt = helpers.sdxl_pipeline(), helpers.sdxl_prompt()
    apply_hidiffusion(pipe)
    watch = {
        "down_blocks.1.downsamplers.0": "out",
        "down_blocks.1.attentions.1": "in",
        "up_blocks.0.upsamplers.0": "out",
        "up_blocks.1.attentions.1": "in",
        "up_blocks.1.attentions.2": "in",
    }
    sizes = SizeRecorder(pipe.unet, watch)
    helpers.run(pipe, prompt, 10)
    sizes.close()
    assert sizes.mid == [4] * 4 + [8] * 6
    assert sizes.seen["down_blocks.1.downsamplers.0"] == [(4, 4)] * 4 + [(8, 8)] * 6
    assert sizes.seen["down_blocks.1.attentions.1"] == [(16, 16)] + [(8, 8)] * 3 + [(16, 16)] * 6
    assert sizes.seen["up_blocks.0.upsamplers.0"] == [(16, 16)] + [(8, 8)] * 3 + [(16, 16)] * 6
    assert sizes.seen["up_blocks.1.attentions.1"] == [(16, 16)] + [(8, 8)] * 3 + [(16, 16)] * 6
    assert sizes.seen["up_blocks.1.attentions.2"] == [(16, 16)] * 10


def test_sdxl_measured_schedule_sizes_per_step(helpers):
    """schedule="measured" (the ComfyUI auto node's): RAD at the first Downsample
    (down_blocks.0: 32 -> 8) for int(0.5 N) steps, the mirrored upsampler back to the skip
    size, and no pooling (down_blocks.1's second pair at its stock size outside RAD)."""
    pipe, prompt = helpers.sdxl_pipeline(), helpers.sdxl_prompt()
    apply_hidiffusion(pipe, schedule="measured")
    watch = {
        "down_blocks.0.downsamplers.0": "out",
        "down_blocks.1.downsamplers.0": "out",
        "down_blocks.1.attentions.1": "in",
        "up_blocks.1.upsamplers.0": "out",
    }
    sizes = SizeRecorder(pipe.unet, watch)
    helpers.run(pipe, prompt, 10)
    sizes.close()
    assert sizes.mid == [4] * 5 + [8] * 5
    assert sizes.seen["down_blocks.0.downsamplers.0"] == [(8, 8)] * 5 + [(16, 16)] * 5
    assert sizes.seen["down_blocks.1.downsamplers.0"] == [(4, 4)] * 5 + [(8, 8)] * 5
    assert sizes.seen["down_blocks.1.attentions.1"] == [(8, 8)] * 5 + [(16, 16)] * 5
    assert sizes.seen["up_blocks.1.upsamplers.0"] == [(32, 32)] * 10


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_measured_schedule_windows_no_larger_than_the_native_grid(helpers, family):
    """The measured schedule's MSW-MSA is window_grid "native" (3x3 windows at 3x the
    side here); an explicit window_grid wins over it."""
    pipe = helpers.sd_pipeline() if family == "sd" else helpers.sdxl_pipeline()
    prompt = helpers.sd_prompt() if family == "sd" else helpers.sdxl_prompt()

    def sample(**options):
        apply_hidiffusion(pipe, apply_raunet=False, **options)
        out = helpers.run(pipe, prompt, 3, size=96)
        remove_hidiffusion(pipe)
        return out

    measured = sample(schedule="measured")
    torch.testing.assert_close(measured, sample(window_grid="native"), rtol=0, atol=0)
    assert (measured - sample()).abs().max() > 1e-3
    torch.testing.assert_close(sample(schedule="measured", window_grid="2x2"), sample(), rtol=0, atol=0)


def test_interrupted_run_then_shorter_run_switches(helpers):
    pipe, prompt = helpers.sd_pipeline(), helpers.sd_prompt()
    apply_hidiffusion(pipe, apply_window_attn=False)

    def interrupt(pipeline, step, timestep, kwargs):
        if step == 5:
            pipeline._interrupt = True
        return kwargs

    sizes = SizeRecorder(pipe.unet)
    helpers.run(pipe, prompt, 10, callback_on_step_end=interrupt)
    assert sizes.mid == [2] * 4 + [4] * 2
    sizes.mid.clear()
    helpers.run(pipe, prompt, 4)
    assert sizes.mid == [2] + [4] * 3
    sizes.mid.clear()
    helpers.run(pipe, prompt, 5)
    assert sizes.mid == [2] * 2 + [4] * 3
    sizes.close()


def test_exception_inside_unet_leaves_nothing_behind(helpers):
    pipe, prompt = helpers.sd_pipeline(), helpers.sd_prompt()
    apply_hidiffusion(pipe)
    expected = helpers.run(pipe, prompt, 5)

    def explode(module, args, output):
        raise RuntimeError("boom")

    handle = pipe.unet.up_blocks[2].register_forward_hook(explode)  # after the pool/RAD state is set
    with pytest.raises(RuntimeError, match="boom"):
        helpers.run(pipe, prompt, 5)
    handle.remove()
    assert getattr(pipe.unet, ATTRIBUTE).slot.current is None
    assert torch.equal(helpers.run(pipe, prompt, 5), expected)


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_img2img_strength_counts_steps_actually_run(helpers, kind):
    """strength 0.5 of 10 steps runs 5: RAD for int(0.4 * 5) = 2 of them (DDIM has no
    begin_index, Euler has one)."""
    pipe = helpers.sd_pipeline(StableDiffusionImg2ImgPipeline, scheduler=helpers.scheduler(kind))
    apply_hidiffusion(pipe, apply_window_attn=False)
    sizes = SizeRecorder(pipe.unet)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    helpers.run(pipe, helpers.sd_prompt(), 10, image=image, strength=0.5)
    sizes.close()
    assert sizes.mid == [2, 2, 4, 4, 4]


def test_second_order_scheduler(helpers):
    """Heun: 3 steps are 5 UNet calls with repeated timesteps; as the official counters,
    RAD is on for int(0.4 * 5) = 2 calls."""
    scheduler = HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    pipe = helpers.sd_pipeline(scheduler=scheduler)
    apply_hidiffusion(pipe, apply_window_attn=False)
    sizes = SizeRecorder(pipe.unet)
    helpers.run(pipe, helpers.sd_prompt(), 3)
    sizes.close()
    assert sizes.mid == [2, 2, 4, 4, 4]


def test_sdxl_inpaint_with_inpainting_unet_is_not_aggressive(helpers):
    """A 9-channel UNet is an inpainting model: pooling from step 0, no RAD (official)."""
    pipe = helpers.sdxl_pipeline(StableDiffusionXLInpaintPipeline, unet=helpers.sdxl_unet(in_channels=9))
    apply_hidiffusion(pipe)
    sizes = SizeRecorder(pipe.unet, {"down_blocks.1.downsamplers.0": "out"})
    generator = torch.Generator().manual_seed(4)
    image = torch.rand(1, 3, 64, 64, generator=generator)
    mask = (torch.rand(1, 1, 64, 64, generator=generator) > 0.5).float()
    latents = helpers.run(pipe, helpers.sdxl_prompt(), 10, image=image, mask_image=mask, strength=1.0)
    sizes.close()
    assert torch.isfinite(latents).all()
    assert sizes.mid == [4] * 4 + [8] * 6
    assert sizes.seen["down_blocks.1.downsamplers.0"] == [(4, 4)] * 4 + [(8, 8)] * 6


@pytest.mark.parametrize("guided", [False, True])
def test_accelerate_hook_added_after_apply_survives_remove(helpers, guided):
    """accelerate's offload hooks replace ``unet.forward``; ours live outside it, so a hook
    added after apply keeps working through remove_hidiffusion (also the guided mode's lock
    and native views, at 3x the reference's side)."""
    hooks = pytest.importorskip("accelerate.hooks", reason="accelerate is not installed")

    class CountCalls(hooks.ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            CountCalls.calls += 1
            return args, kwargs

    pipe, prompt = helpers.sd_pipeline(), helpers.sd_prompt()
    size = 96 if guided else 64
    options = {"reference": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))} if guided else {}
    baseline = helpers.run(pipe, prompt, 4, size=size)
    apply_hidiffusion(pipe, **options)
    active = helpers.run(pipe, prompt, 4, size=size)
    CountCalls.calls = 0
    hooks.add_hook_to_module(pipe.unet, CountCalls())
    assert torch.equal(helpers.run(pipe, prompt, 4, size=size), active)
    remove_hidiffusion(pipe)
    assert torch.equal(helpers.run(pipe, prompt, 4, size=size), baseline)
    assert CountCalls.calls == 8
    assert not any(hasattr(m, "_diffusers_hook") for m in pipe.unet.modules())
    assert not hasattr(pipe.unet, ATTRIBUTE)
