"""What the compatibility tests share: the @compat declaration, applying our nodes, recording calls.

Each test runs inside real ComfyUI on the tiny SD1.5- and SDXL-layout UNets, at small odd
or non-square latents, and fails if its combination broke: the result must be finite,
both HiDiffusion effects and the other party must visibly act, and where an exact
statement exists (RAD equals the dilated conv, windows equal the naive reference, a
skipped call equals the unpatched one) it is checked exactly.

The tests live in one file per area (``test_compat_other_nodes.py``, ``test_compat_formats.py``,
``test_compat_ours.py``, ``test_compat_samplers.py``). Every test carries
``@compat(area, combination, status, note)``; ``scripts/make_compat_table.py`` turns these
into docs/compatibility.md (a test in tests/core checks the file is up to date), so the
table can only claim what a test proves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import executor
import torch
from harness import (
    conditioning,
    pack_module,
    sample,
    tiny_model,
)

OTHER_NODES = "Other nodes on the same model"
FORMATS = "Weights and model formats"
OURS = "HiDiffusion's nodes together"
SAMPLERS = "Samplers and schedules"


def compat(area: str, combination: str, status: str, note: str = "") -> Callable:
    """Declare the row of docs/compatibility.md this test proves (read by scripts/make_compat_table.py)."""

    def mark(test: Callable) -> Callable:
        test.compat = (area, combination, status, note)
        return test

    return mark


# --- applying the nodes --------------------------------------------------------------------

RAUNET_BLOCKS = {
    "sd15": {"input_blocks": "3", "output_blocks": "8", "ca_input_blocks": "4", "ca_output_blocks": "8"},
    "sdxl": {"input_blocks": "3", "output_blocks": "5", "ca_input_blocks": "4", "ca_output_blocks": "5"},
}


def raunet_times() -> dict:
    """ApplyRAUNet's own defaults for every widget but the blocks, read from its declaration."""
    settings = pack_module("hidiff.comfyui.raunet_settings")
    return {name: settings.DEFAULTS[name] for name in settings.PARAMETERS.widget_names if "blocks" not in name}


MSW_BLOCKS = {
    "sd15": {"input_blocks": "1,2", "output_blocks": "9,10,11"},
    "sdxl": {"input_blocks": "4,5", "output_blocks": "3,4,5"},
}
for _kind in ("sdxl_inpaint", "sdxl_playground", "sdxl_vpred_edm"):
    RAUNET_BLOCKS[_kind], MSW_BLOCKS[_kind] = RAUNET_BLOCKS["sdxl"], MSW_BLOCKS["sdxl"]
RAUNET_BLOCKS["sdxl_refiner"] = RAUNET_BLOCKS["sd15"]  # four levels, Downsamples at 3, 6 and 9
MSW_BLOCKS["sdxl_refiner"] = {"input_blocks": "4,5", "output_blocks": "6,7,8"}  # its highest attention level
MSW_TIMES = {"middle_blocks": "", "time_mode": "percent", "start_time": 0.0, "end_time": 1.0}
RAD_ONLY = {"ca_input_blocks": "", "ca_output_blocks": ""}
MSW_EFFECT = "hidiffusion_msw_msa"


def raunet(pack, model, family: str = "sd15", yaml_parameters: str | None = None, **overrides):
    values = {**RAUNET_BLOCKS[family], **raunet_times(), **overrides}
    return pack["ApplyRAUNet"].execute(model=model, yaml_parameters=yaml_parameters, **values).result[0]


def msw(pack, model, family: str = "sd15", yaml_parameters: str | None = None, **overrides):
    values = {**MSW_BLOCKS[family], **MSW_TIMES, **overrides}
    return pack["ApplyMSWMSAAttention"].execute(model=model, yaml_parameters=yaml_parameters, **values).result[0]


def hidiffusion(pack, model, family: str = "sd15"):
    """RAU-Net then MSW-MSA, the usual pairing."""
    return msw(pack, raunet(pack, model, family), family)


_SAMPLES: dict[tuple, torch.Tensor] = {}


def sample_once(name: str, build: Callable, family: str, height: int, width: int) -> torch.Tensor:
    """``sample(build(), family, height, width)`` of a reference model that several tests compare
    with, computed once per session (sampling is deterministic, and the suite must stay quick)."""
    key = (name, family, height, width)
    if key not in _SAMPLES:
        _SAMPLES[key] = sample(build(), family, height, width)
    return _SAMPLES[key]


def hidiffusion_alone(pack, family: str, height: int, width: int) -> torch.Tensor:
    return sample_once("hidiffusion", lambda: hidiffusion(pack, tiny_model(family), family), family, height, width)


def c(size: int, divisor: float) -> int:
    return math.ceil(size / divisor)


def different(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Clearly different, not float noise."""
    return not torch.allclose(a, b, atol=1e-4, rtol=1e-4)


# --- recording what ran ----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One input block of one UNet call, as the next block sees it."""

    block: int
    sigma: float
    batch: tuple[int, ...]
    size: tuple[int, int]


def recorded(model):
    """A clone whose input block patch records every block's output size, per UNet call."""
    calls: list[Call] = []
    clone = model.clone()

    def record(h, options):
        calls.append(
            Call(options["block"][1], float(options["sigmas"].max()), tuple(options["cond_or_uncond"]), h.shape[-2:])
        )
        return h

    clone.set_model_input_block_patch(record)
    return clone, calls


def attn1_replaces(model) -> dict:
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})


def windowed(model):
    """A clone whose MSW-MSA patch also records (block, sigma, windowed?) for every call."""
    calls: list[tuple[tuple, float, bool]] = []
    clone = model.clone()
    for key, patch in list(attn1_replaces(model).items()):
        if getattr(patch, "hidiffusion_effect", None) != MSW_EFFECT:
            continue

        def recorder(q, k, v, extra_options, patch=patch):
            layout = patch.layout_for(q, k, v, extra_options)
            calls.append((tuple(extra_options["block"]), float(extra_options["sigmas"].max()), layout is not None))
            return patch(q, k, v, extra_options)

        clone.set_model_attn1_replace(recorder, *key)
    return clone, calls


def sizes(calls: list[Call], block: int, sigma: float | None = None, batch: tuple | None = None) -> set:
    return {
        call.size
        for call in calls
        if call.block == block
        and (sigma is None or abs(call.sigma - sigma) <= 1e-4 * sigma)
        and (batch is None or call.batch == batch)
    }


def to_sigma(model) -> Callable[[float], float]:
    return model.get_model_object("model_sampling").percent_to_sigma


FIRST_SIGMA = 14.6146  # the first sigma of every run of the tiny models (sigma_max)


# --- shared by several areas ------------------------------------------------------------------

KSAMPLER = (
    "KSampler",
    {"seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
)


def ours_in_a_graph(family: str = "sd15") -> list[tuple[str, dict]]:
    """ApplyRAUNet then ApplyMSWMSAAttention as workflow nodes, staged like the sampler tests
    (each effect on at some sigmas and off at others)."""
    times = {"end_time": RAD_END, "ca_end_time": CA_END, "yaml_parameters": ""}
    return [
        ("ApplyRAUNet", {**RAUNET_BLOCKS[family], **raunet_times(), **times}),
        ("ApplyMSWMSAAttention", {**MSW_BLOCKS[family], **MSW_TIMES, "start_time": MSW_START, "yaml_parameters": ""}),
    ]


def through_executor(model, model_nodes: list, sampler: tuple, size: tuple[int, int], record: bool = False):
    """Run model -> ``model_nodes`` -> ``sampler`` through ComfyUI's executor on ``model``.

    With ``record``, a recorder after the last model node sees every call (as :func:`staged`).
    Returns the latent and the recorded (input block calls, MSW-MSA calls), or Nones.
    """
    found: dict = {}

    def record_model(model):
        clone, found["calls"] = recorded(model)
        clone, found["msw"] = windowed(clone)
        return clone

    executor.PROVIDED.update(
        model=model, positive=conditioning("sd15", seed=11), negative=conditioning("sd15", seed=12), record=record_model
    )
    chain = [*model_nodes, ("TestApply", {"key": "record"})] if record else model_nodes
    executor.run_prompt(executor.chain_prompt(chain, sampler, *size))
    return executor.KEPT.pop("out"), found.get("calls"), found.get("msw")


def last_block_features(model):
    """A clone that keeps, per UNet call, the features entering the last output block."""
    seen: list[tuple[float, tuple[int, ...], torch.Tensor]] = []
    clone = model.clone()
    last = len(model.get_model_object("diffusion_model.output_blocks")) - 1

    def keep(h, hsp, options):
        if options["block"][1] == last:
            seen.append((float(options["sigmas"].max()), tuple(options["cond_or_uncond"]), h.clone()))
        return h, hsp

    clone.set_model_output_block_patch(keep)
    return clone, seen


RAD_END, CA_END, MSW_START = 0.4, 0.2, 0.3
"""Sampler tests: RAD until 40%, CA until 20%, windows from 30%, so every effect is on at some
sigmas and off at others (4 steps: sigmas 14.6, 2.92, 0.93, 0.03)."""


def staged(pack, model, family: str = "sd15"):
    patched = msw(pack, raunet(pack, model, family, end_time=RAD_END, ca_end_time=CA_END), family, start_time=MSW_START)
    clone, calls = recorded(patched)
    return windowed(clone) + (calls,)


def check_gating(model, calls: list[Call], msw_calls: list, height: int, width: int) -> None:
    """Every call: RAD, CA and the windows are on exactly when its own sigma is in their range."""
    sigma_of = to_sigma(model)
    rad_until, ca_until, msw_from = sigma_of(RAD_END), sigma_of(CA_END), sigma_of(MSW_START)
    level1 = (c(height, 2), c(width, 2))
    states = set()
    last_rad = None
    for call in calls:
        if call.block == 3:
            rad = call.sigma >= rad_until
            assert call.size == ((c(height, 4), c(width, 4)) if rad else level1), call
            last_rad = call.size
            states.add(("rad", rad))
        elif call.block == 4:
            ca = call.sigma >= ca_until
            assert call.size == ((c(last_rad[0], 2), c(last_rad[1], 2)) if ca else last_rad), call
            states.add(("ca", ca))
    for block, sigma, done in msw_calls:
        assert done == (sigma <= msw_from), (block, sigma)
        states.add(("msw", done))
    assert states == {(name, on) for name in ("rad", "ca", "msw") for on in (True, False)}, states


def check_run(pack, family: str, size: tuple[int, int], run: Callable) -> list[Call]:
    """Finite, the same twice for one seed, gated by sigma, and different from the unpatched model."""
    model = tiny_model(family)
    patched, msw_calls, calls = staged(pack, model, family)
    first = run(patched)
    assert torch.isfinite(first).all()
    check_gating(model, calls, msw_calls, *size)
    assert torch.equal(first, run(patched))
    assert different(first, run(model))
    return calls
