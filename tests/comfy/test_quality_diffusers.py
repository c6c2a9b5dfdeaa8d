"""The lab's committed models in diffusers: the weights map onto a ``UNet2DConditionModel``
through diffusers' own converter and compute what ComfyUI's UNet computes, and
``hidiff.diffusers.upscale`` at 3x the side draws the HiDiffusion Hires Fix node's
composition on the same seed (the lab page docs/quality/lab-diffusers-sdxl-3x.md has 8 seeds)."""

from __future__ import annotations

import pytest
import torch

from hidiff.quality import models

pytest.importorskip("diffusers.hooks", reason="diffusers is not installed: pip install -e '.[diffusers]'")

COMPOSITION_SEED = 7001
"""A seed the documented lab run did not use; of 7000-7002 the one whose lock-off run moves
the subject most (mask IoU 0.56 against the node's, where 7000 and 7002 give 0.67 and 0.89;
with the lock all three give 0.99), so the test shows the lock, not the seed, carries the
composition. About 25 s on a 2-core CPU."""


def unet_outputs(layout: str, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's and diffusers' outputs of the lab model on the same noisy input."""
    from hidiff.quality import diffusers_lab

    comfy_model = models.load(layout).model
    unet = diffusers_lab.load_unet(layout)
    native = models.native_of(layout)
    sample = torch.randn(2, 4, native, native, generator=torch.Generator().manual_seed(1))
    extra = {}
    if layout == "sdxl":
        px = float(native * 8)
        time_ids = torch.tensor([[px, px, 0.0, 0.0, px, px]] * 2)
        extra["added_cond_kwargs"] = {"text_embeds": torch.zeros(2, diffusers_lab.POOLED), "time_ids": time_ids}
    with torch.no_grad():
        comfy = comfy_model.diffusion_model(
            sample, timesteps=timesteps, context=models.context(2), y=models.adm(comfy_model, 2, native)
        )
        ours = unet(sample, timesteps, encoder_hidden_states=models.context(2), **extra).sample
    return comfy, ours


@pytest.mark.parametrize("layout", [layout for layout in models.TRAINED if layout in models.UNET_LAYOUTS])
def test_the_lab_weights_compute_the_same_in_diffusers(pack, layout):
    """Within 1e-4 of ComfyUI's output, where a call at other timesteps differs by far more."""
    comfy, ours = unet_outputs(layout, torch.tensor([500.0, 30.0]))
    assert (comfy - ours).abs().max() < 1e-4
    _, elsewhere = unet_outputs(layout, torch.tensor([700.0, 200.0]))
    assert (comfy - elsewhere).abs().max() > 0.05


def test_upscale_in_diffusers_draws_the_node_composition_at_three_times_the_side(pack):
    """The same native image in both, and at 3x the side the same subject where the node puts
    it; with the lock and the native views off it moves."""
    from hidiff.quality import diffusers_lab

    rows, _ = diffusers_lab.compare("sdxl", 3, [COMPOSITION_SEED])
    native, diffusers_native, node, upscaled, lock_off = rows
    assert diffusers_native["subjects"] == native["subjects"] and diffusers_native["mask_iou"][0] > 0.95, rows
    assert upscaled["subjects"] == node["subjects"] == [1], rows
    assert upscaled["mask_iou"][0] > 0.9, rows  # 0.99 here
    assert lock_off["mask_iou"][0] < 0.75, rows  # 0.56 here


def flux_outputs(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's and diffusers' x0 of the Flux-layout lab model on the same noisy input: ComfyUI's
    model returns the denoised latent; diffusers' transformer the velocity on packed tokens,
    x0 = x − σ·v."""
    from hidiff.diffusers.calls import grid_ids, pack, unpack
    from hidiff.quality import diffusers_lab

    comfy_model = models.load("flux")
    transformer = diffusers_lab.load_transformer("flux")
    native = models.native_of("flux")
    sample = torch.randn(2, 16, native, native, generator=torch.Generator().manual_seed(1))
    context = models.context(2)
    with torch.no_grad():
        comfy = comfy_model.model.apply_model(sample, sigmas, c_crossattn=context, y=torch.zeros(2, models.CONTEXT_DIM))
        velocity = transformer(
            hidden_states=pack(sample), encoder_hidden_states=context, pooled_projections=torch.zeros(2, 32),
            timestep=sigmas, img_ids=grid_ids(native // 2, native // 2, sample), txt_ids=torch.zeros(1, 3),
        ).sample  # fmt: skip
    ours = sample - sigmas.view(-1, 1, 1, 1) * unpack(velocity, (native // 2, native // 2))
    return comfy, ours


def test_the_flux_lab_weights_compute_the_same_in_diffusers_through_its_converter(pack):
    """diffusers' Flux converter (its single-block split padded to FLUX.1's width and cut back)
    gives a transformer within 1e-4 of ComfyUI's Flux, where other sigmas differ by far more."""
    comfy, ours = flux_outputs(torch.tensor([0.8, 0.3]))
    assert (comfy - ours).abs().max() < 1e-4, (comfy - ours).abs().max()
    _, elsewhere = flux_outputs(torch.tensor([0.6, 0.1]))
    assert (comfy - elsewhere).abs().max() > 0.05


FLUX_SEED = 7000
"""A seed the documented Flux run (docs/quality/lab-diffusers-flux-3x.md, seeds 0-7) did not use."""


def test_upscale_in_diffusers_keeps_the_flux_lab_models_one_subject_at_three_times_the_side(pack):
    """On the Flux-layout lab model the diffusers native sample is ComfyUI's; at 3x the side
    ``upscale`` keeps one subject where the node puts it, and with the lock and the views off
    the transformer repeats it or draws none there."""
    from hidiff.quality import diffusers_lab

    rows, _ = diffusers_lab.compare("flux", 3, [FLUX_SEED])
    native, diffusers_native, node, upscaled, lock_off = rows
    assert diffusers_native["subjects"] == native["subjects"] == [1] and diffusers_native["mask_iou"][0] > 0.95, rows
    assert upscaled["subjects"] == node["subjects"] == [1], rows
    assert upscaled["mask_iou"][0] > 0.7, rows
    assert lock_off["subjects"] != [1] or lock_off["mask_iou"][0] < 0.3, rows
