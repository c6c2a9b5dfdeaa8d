"""Native views (the Hires Fix's structure at scale) in real ComfyUI: each large call against
the formula written here, sizes that do not divide, the native pass, and bad input."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from harness import tiny_model
from reference import gaussian
from test_guided_comfy import ADVANCED, guided, img2img, native_latent, noise_level

VIEWS_KEY = "hidiffusion_views"


class CallRecorder:
    """A model function wrapper: each call's result beside the formula's and the call without views."""

    def __init__(self, model, stride: int, share: float, blur: float, degrain: float) -> None:
        self.model, self.stride, self.share, self.blur, self.degrain = model, stride, share, blur, degrain
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __deepcopy__(self, memo: dict) -> CallRecorder:
        return self

    def __call__(self, apply_model, args: dict) -> torch.Tensor:
        x, t, c = args["input"], args["timestep"], args["c"]
        result = apply_model(x, t, **c)
        options = dict(c["transformer_options"])
        wrappers = {kind: dict(by_key) for kind, by_key in options.get("wrappers", {}).items()}
        assert wrappers["apply_model"].pop(VIEWS_KEY), "the node put its views wrapper on the model"
        options["wrappers"] = wrappers
        plain = {**c, "transformer_options": options}
        without = apply_model(x, t, **plain)
        self.calls.append((result, self.expected(apply_model, x, t, plain, without), without))
        return result

    def expected(self, apply_model, x, t, plain, without):
        """Blur (DemoFusion's c3), re-standardise each channel, mirror up to a multiple of the stride, denoise
        each view, put back, take out each view's smooth offset, crop, blend."""
        s, level = self.stride, noise_level(self.model, float(t.max()))
        ramp = 0.5 * (1 + math.cos(math.pi * (1 - level)))
        low = gaussian(x, s - 1, self.blur * (0.99 * ramp + 0.01))
        dims = (-2, -1)  # each channel of each image
        blurred = (low - low.mean(dims, keepdim=True)) / low.std(dims, keepdim=True) * x.std(
            dims, keepdim=True
        ) + x.mean(dims, keepdim=True)
        height, width = x.shape[-2:]
        blurred = F.pad(blurred, (0, -width % s, 0, -height % s), mode="reflect")
        placed = torch.zeros_like(blurred)
        for i in range(s):
            for j in range(s):
                placed[:, :, i::s, j::s] = apply_model(blurred[:, :, i::s, j::s], t, **plain)
        residual = placed - gaussian(placed, s - 1, self.degrain * s / 2)
        offsets = torch.zeros_like(placed)
        for i in range(s):
            for j in range(s):
                offsets[:, :, i::s, j::s] = gaussian(residual[:, :, i::s, j::s], s - 1, self.degrain)
        return (1 - self.share) * without + self.share * (placed - offsets)[:, :, :height, :width]


@pytest.mark.parametrize(
    ("share", "scale_by", "stride", "sampler"),
    [(0.6, 2.0, 2, "euler"), (1.0, 3.0, 3, "dpmpp_2m"), (0.5, 3.25, 3, "euler_ancestral")],
)
def test_each_large_call_is_the_written_out_blend_of_the_call_and_its_native_views(
    pack, share, scale_by, stride, sampler
):
    """At a share below 1 and at 1 (the large call skipped), under a one-step, a multistep and
    an ancestral sampler, and at 3.25x (a 52x52 latent mirrored to 54x54 for stride 3 and
    cropped back)."""
    advanced = f"{ADVANCED}\nviews: {share}\nviews_blur: 2\nviews_degrain: 1.5"
    model, latent = guided(pack, tiny_model("sd15"), native_latent(), scale_by=scale_by, advanced=advanced,
                           raunet=False, msw_msa=False)  # fmt: skip
    recorder = CallRecorder(model, stride, share, 2.0, 1.5)
    model = model.clone()
    model.set_model_unet_function_wrapper(recorder)
    img2img(model, "sd15", latent, sampler=sampler)
    assert len(recorder.calls) == 3
    gaps = []
    for result, expected, without in recorder.calls:
        torch.testing.assert_close(result, expected, atol=2e-4, rtol=1e-4)
        gaps.append(float((expected - without).abs().max()))
    assert min(gaps) > 100 * 2e-4, f"the views must move each call far more than the tolerance: {gaps}"


def views_wrappers(model) -> list:
    """The pack's native-views wrappers on ``model``."""
    return model.get_wrappers("apply_model", VIEWS_KEY)


def test_under_twice_the_native_side_the_model_has_no_views_and_the_log_says_so(pack, logs):
    model, _ = guided(pack, tiny_model("sd15"), native_latent(), scale_by=1.5)
    assert views_wrappers(model) == []
    told = [m for m in logs.messages(logging.INFO) if "without native views" in m]
    assert len(told) == 1 and "a 24x24 latent is under twice the 16x16 one" in told[0]
    views_model, _ = guided(pack, tiny_model("sd15"), native_latent(), scale_by=2.0)
    assert [type(w).__name__ for w in views_wrappers(views_model)] == ["NativeViews"]
    off, _ = guided(pack, views_model, native_latent(), scale_by=2.0, advanced=f"{ADVANCED}\nviews: 0")
    assert views_wrappers(off) == []


@pytest.mark.parametrize(
    ("advanced", "message"),
    [
        ("views: 2", "views = 2 is out of range"),
        ("views_blur: 5", "views_blur = 5 is out of range: it must be 0 to 4"),
        ("views_degrain: -1", "views_degrain = -1 is out of range: it must be 0 to 4"),
        ("views_blur: soft", "views_blur"),
    ],
)
def test_bad_views_input_is_refused_naming_it(pack, advanced, message):
    with pytest.raises(ValueError) as error:
        guided(pack, tiny_model("sd15"), native_latent(), advanced=f"{ADVANCED}\n{advanced}")
    assert message in str(error.value)


def test_controlnet_guided_calls_keep_the_large_call_and_the_run_is_told_once(pack, logs):
    """A ControlNet's residuals are made for the large latent: its calls run as with `views: 0`
    (the same image), and the run is told once."""
    from harness import control_hint, sample, tiny_controlnet

    control = tiny_controlnet("sd15").copy().set_cond_hint(control_hint(32, 32), 1.0, (0.0, 1.0))
    views, _ = guided(pack, tiny_model("sd15"), native_latent(), scale_by=2.0)
    large, _ = guided(pack, tiny_model("sd15"), native_latent(), scale_by=2.0, advanced=f"{ADVANCED}\nviews: 0")
    with_views = sample(views, "sd15", 32, 32, seed=5, control=control)
    assert torch.equal(with_views, sample(large, "sd15", 32, 32, seed=5, control=control))
    told = [m for m in logs.messages(logging.WARNING) if "a ControlNet guides the large calls" in m]
    assert len(told) == 1, told
    assert not torch.equal(with_views, sample(views, "sd15", 32, 32, seed=5))
