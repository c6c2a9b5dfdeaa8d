"""HiDiffusion's own nodes together: in either order, and applied twice.

See compat_common for what every test checks and how the table is made from them.
"""

from __future__ import annotations

import pytest
import torch
from compat_common import (
    OURS,
    RAD_ONLY,
    compat,
    different,
    hidiffusion,
    msw,
    raunet,
)
from harness import (
    rau_patches,
    sample,
    tiny_model,
)

# --- our two nodes together ----------------------------------------------------------------------


@compat(OURS, "RAU-Net and MSW-MSA applied in either order", "works", "The order does not change the result.")
@pytest.mark.parametrize(("family", "size"), [("sd15", (21, 29)), ("sdxl", (29, 21))])
def test_our_nodes_in_either_order(pack, family, size):
    model = tiny_model(family)
    first = sample(msw(pack, raunet(pack, model, family), family), family, *size)
    assert torch.equal(first, sample(raunet(pack, msw(pack, model, family), family), family, *size))
    assert different(first, sample(raunet(pack, model, family), family, *size))
    assert different(first, sample(msw(pack, model, family), family, *size))


@compat(
    OURS,
    "each node applied twice",
    "works",
    "The later application replaces the earlier one: the result equals applying only the later settings.",
)
@pytest.mark.parametrize(("family", "size"), [("sd15", (21, 29)), ("sdxl", (29, 21))])
def test_our_nodes_applied_twice(pack, family, size):
    model = tiny_model(family)
    earlier = msw(
        pack,
        raunet(pack, model, family, **RAD_ONLY, end_time=1.0, upscale_mode="area"),
        family,
        input_blocks="",
        start_time=0.5,
    )
    twice = msw(pack, raunet(pack, earlier, family), family)
    result = sample(twice, family, *size)
    assert torch.equal(result, sample(hidiffusion(pack, model, family), family, *size))
    assert different(result, sample(earlier, family, *size))
    assert rau_patches(twice) and all("mode='bicubic'" in repr(p) for p in rau_patches(twice))
