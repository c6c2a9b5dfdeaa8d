"""The quality lab's models inside real ComfyUI: they train deterministically, start as
input copiers, learn, and the nodes see them as the families they stand for."""

from __future__ import annotations

import pytest
import torch

from hidiff.quality import models, train


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_training_runs_and_the_same_seed_gives_the_same_weights(pack, layout):
    settings = train.TrainSettings(layout=layout, steps=3, batch=4, dataset=16, threads=1)
    first = train.train(settings)
    again = train.train(settings)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    other = train.train(train.TrainSettings(layout=layout, steps=3, batch=4, dataset=16, threads=1, seed=1))
    assert any(not torch.equal(first[name], other[name]) for name in first)


def test_the_model_starts_as_the_input_copier(pack):
    """At the start the model outputs its normalised input: at the noisiest step that is the
    noise itself, so the epsilon error is far below 1 (a zero-output start gives 1)."""
    model = models.base_model("sdxl")
    train.initialise(model.diffusion_model, torch.Generator().manual_seed(0))
    from hidiff.quality import scenes

    x0 = scenes.batch(range(8), 16, 16)
    sigma = model.model_sampling.sigmas[-1].float()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    x_in = (x0 + sigma * eps) / torch.sqrt(sigma**2 + 1)
    with torch.no_grad():
        out = model.diffusion_model(
            x_in, torch.full((8,), 999.0), context=models.context(8), y=models.adm(model, 8, 16)
        )
    assert ((out - eps) ** 2).mean() < 0.02


def test_training_lowers_the_loss(pack):
    """A few dozen steps on a small batch: the weighted epsilon loss falls well below its start."""
    losses: list[float] = []
    settings = train.TrainSettings(layout="sdxl", native=16, steps=80, batch=8, dataset=64, threads=2)
    train.train(settings, losses=losses)
    assert len(losses) == 80
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


@pytest.mark.parametrize(("layout", "family"), [("sd15", "SD15"), ("sdxl", "SDXL")])
def test_the_lab_models_have_the_real_layouts(pack, layout, family):
    """The nodes read the lab models as the families they stand for, with the standard pairs."""
    from hidiff.core.unet_map import inspect_unet

    unet = inspect_unet(models.base_model(layout).diffusion_model)
    assert str(unet.family) == family
    assert unet.downsample_pairs() == ({3: 8, 6: 5, 9: 2} if layout == "sd15" else {3: 5, 6: 2})
