"""Native views (the Hires Fix's structure at scale) in real ComfyUI: each large call against
the formula written here, sizes that do not divide, the native pass, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (torch convention)
from harness import tiny_model
from test_guided_comfy import ADVANCED, guided, img2img, native_latent, noise_level

VIEWS_KEY = "hidiffusion_views"


def gaussian(x: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """A separable Gaussian of taps exp(-k^2 / 2 sigma^2), |k| <= radius, borders mirrored."""
    taps = torch.tensor([math.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)])
    taps = taps / taps.sum()
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, taps.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(out, taps.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


class CallRecorder:
    """A model function wrapper: each call's result beside the formula's and the call without views."""

    def __init__(self, stride: int, share: float, blur: float, degrain: float) -> None:
        self.stride, self.share, self.blur, self.degrain = stride, share, blur, degrain
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
        s, level = self.stride, noise_level(self.model, float(t.max()))
        ramp = 0.5 * (1 + math.cos(math.pi * (1 - level)))
        low = gaussian(x, s - 1, self.blur * (0.99 * ramp + 0.01))
        blurred = torch.stack(
            [(low[b] - low[b].mean()) / low[b].std() * x[b].std() + x[b].mean() for b in range(x.shape[0])]
        )
        placed = torch.zeros_like(x)
        for i in range(s):
            for j in range(s):
                placed[:, :, i::s, j::s] = apply_model(blurred[:, :, i::s, j::s], t, **plain)
        residual = placed - gaussian(placed, s - 1, self.degrain * s / 2)
        offsets = torch.zeros_like(x)
        for i in range(s):
            for j in range(s):
                offsets[:, :, i::s, j::s] = gaussian(residual[:, :, i::s, j::s], s - 1, self.degrain)
        return (1 - self.share) * without + self.share * (placed - offsets)


@pytest.mark.parametrize(("share", "sampler"), [(0.6, "euler"), (1.0, "dpmpp_2m")])
def test_each_large_call_is_the_written_out_blend_of_the_call_and_its_native_views(pack, share, sampler):
    advanced = f"{ADVANCED}\nviews: {share}\nviews_exponent: 0\nviews_blur: 2\nviews_degrain: 1.5"
    model, latent = guided(pack, tiny_model("sd15"), native_latent(), scale_by=4.0, advanced=advanced,
                           raunet=False, msw_msa=False)  # fmt: skip
    recorder = CallRecorder(4, share, 2.0, 1.5)
    recorder.model = model
    model = model.clone()
    model.set_model_unet_function_wrapper(recorder)
    img2img(model, "sd15", latent)
    assert len(recorder.calls) == 3
    gaps = []
    for result, expected, without in recorder.calls:
        torch.testing.assert_close(result, expected, atol=2e-4, rtol=1e-4)
        gaps.append(float((expected - without).abs().max()))
    assert min(gaps) > 100 * 2e-4, f"the views must move each call far more than the tolerance: {gaps}"
