"""The quality lab's models inside real ComfyUI: they train, deterministically, and the nodes see them.

(The committed weights and the regression figures come with the lab's next step; see the
session notes in the changelog.)
"""

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


def test_training_lowers_the_loss(pack):
    """A few dozen steps on a small batch: the epsilon loss falls well below its start (about 1,
    predicting no noise). A model whose norms or weights start dead stays at 1."""
    losses: list[float] = []
    settings = train.TrainSettings(layout="sdxl", native=16, steps=80, batch=8, dataset=64, threads=2)
    train.train(settings, losses=losses)
    assert len(losses) == 80 and losses[0] > 0.9
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10


@pytest.mark.parametrize(("layout", "family"), [("sd15", "SD15"), ("sdxl", "SDXL")])
def test_the_lab_models_have_the_real_layouts(pack, layout, family):
    """The nodes read the lab models as the families they stand for, with the standard pairs."""
    from hidiff.core.unet_map import inspect_unet

    unet = inspect_unet(models.base_model(layout).diffusion_model)
    assert str(unet.family) == family
    assert unet.downsample_pairs() == ({3: 8, 6: 5, 9: 2} if layout == "sd15" else {3: 5, 6: 2})
