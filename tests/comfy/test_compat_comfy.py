"""Compatibility of HiDiffusion's nodes with other nodes, model formats and samplers.

Each test runs inside real ComfyUI on the tiny SD1.5- and SDXL-layout UNets, at small odd
or non-square latents, and fails if its combination broke: the result must be finite,
both HiDiffusion effects and the other party must visibly act, and where an exact
statement exists (RAD equals the dilated conv, windows equal the naive reference, a
skipped call equals the unpatched one) it is checked exactly.

Every test carries ``@compat(area, combination, status, note)``;
``scripts/make_compat_table.py`` turns these into docs/compatibility.md (a test in
tests/core checks the file is up to date), so the table can only claim what a test proves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models
import executor
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from harness import (
    CONFIGS,
    assert_matches_a_decisive_reference,
    conditioning,
    fresh_model,
    load_third_party,
    pack_module,
    rau_patches,
    sample,
    sharp_attention_model,
    tiny_model,
)
from reference import naive_windowed

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
RAUNET_TIMES = {
    "time_mode": "percent",
    "start_time": 0.0,
    "end_time": 0.45,
    "upscale_mode": "bicubic",
    "ca_start_time": 0.0,
    "ca_end_time": 0.3,
    "ca_upscale_mode": "bicubic",
    "ca_downscale_mode": "avg_pool2d",
    "ca_downscale_factor": 2.0,
    "two_stage_upscale_mode": "disabled",
}
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
    values = {**RAUNET_BLOCKS[family], **RAUNET_TIMES, **overrides}
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


# --- FreeU -----------------------------------------------------------------------------------


def freeu(model, version: str):
    from comfy_extras.nodes_freelunch import FreeU, FreeU_V2

    node = FreeU if version == "FreeU" else FreeU_V2
    return node().patch(model, 1.3, 1.4, 0.9, 0.2)[0]


@compat(
    OTHER_NODES,
    "FreeU (core)",
    "works",
    "Before or after the HiDiffusion nodes. FreeU scales by channel count, so it also acts on the maps RAU-Net shrinks.",
)
@pytest.mark.parametrize("order", ["freeu_first", "freeu_last"])
def test_freeu(pack, order):
    check_freeu(pack, "FreeU", order)


FREEU_V2_NOTE = (
    "Before or after the HiDiffusion nodes. FreeU V2 normalises each map by its max - min, which is 0 on a 1x1 map "
    "(a NaN image); where RAU-Net shrinks the middle block to 1x1 (very small images: SD1.x with the CA downscale, "
    "both sides 256 px or less) the run is refused before its first step with a message naming the sizes (mid-run "
    "only where another node also changes the sizes or the sampler picks its own sigmas)."
)


@compat(OTHER_NODES, "FreeU V2 (core)", "works with note", FREEU_V2_NOTE)
@pytest.mark.parametrize("order", ["freeu_first", "freeu_last"])
def test_freeu_v2(pack, order):
    check_freeu(pack, "FreeU V2", order, size=(37, 53))  # the middle block is 2x2 while RAU-Net is active


@compat(OTHER_NODES, "FreeU V2 (core)", "works with note")
def test_freeu_v2_on_a_one_token_middle_block_stops_with_a_clear_message(pack):
    model = tiny_model("sd15")
    assert torch.isfinite(sample(freeu(model, "FreeU V2"), "sd15", 21, 29, steps=2)).all()  # stock: middle 3x4
    for both in (freeu(hidiffusion(pack, model), "FreeU V2"), hidiffusion(pack, freeu(model, "FreeU V2"))):
        with pytest.raises(ValueError) as error:
            sample(both, "sd15", 21, 29, steps=2)  # RAD + CA: the middle block is 1x1
        message = str(error.value)
        assert "FreeU_V2 (comfy_extras.nodes_freelunch) turns a 1x1 map into NaN" in message
        assert "21x29 latent" in message and "use core FreeU (V1) instead" in message


def check_freeu(pack, version: str, order: str, size: tuple[int, int] = (21, 29)) -> None:
    model = tiny_model("sd15")
    if order == "freeu_first":
        both = hidiffusion(pack, freeu(model, version))
    else:
        both = freeu(hidiffusion(pack, model), version)
    result = sample(both, "sd15", *size)
    assert torch.isfinite(result).all()
    assert different(result, hidiffusion_alone(pack, "sd15", *size))  # FreeU acted
    assert different(result, sample_once(version, lambda: freeu(model, version), "sd15", *size))  # HiDiffusion acted


# --- third-party packs: the real ones (scripts/setup.sh), through ComfyUI's executor ------------

KSAMPLER = (
    "KSampler",
    {"seed": 3, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
)


def ours_in_a_graph(family: str = "sd15") -> list[tuple[str, dict]]:
    """ApplyRAUNet then ApplyMSWMSAAttention as workflow nodes, staged like the sampler tests
    (each effect on at some sigmas and off at others)."""
    times = {"end_time": RAD_END, "ca_end_time": CA_END, "yaml_parameters": ""}
    return [
        ("ApplyRAUNet", {**RAUNET_BLOCKS[family], **RAUNET_TIMES, **times}),
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


FREEU_ADVANCED_WIDTH = 160
"""The tiny SD1.5 layout at 160/320/640/640 channels: FreeU_Advanced acts only on maps of 640
and 1280 channels (SD1.x and SDXL widths), so on the 32-channel tiny model it would do nothing."""


def freeu_advanced_node(registry: dict) -> tuple[str, dict]:
    """WAS_FreeU with every widget at what a newly placed node shows (a combo's first option,
    else the default), as the frontend queues it, and target_block all."""
    types = registry["WAS_FreeU"].INPUT_TYPES()
    values = {
        name: spec[0][0] if isinstance(spec[0], list) else spec[1]["default"]
        for section in ("required", "optional")
        for name, spec in types.get(section, {}).items()
        if spec[0] != "MODEL"
    }
    return "WAS_FreeU", {**values, "target_block": "all"}


@compat(
    OTHER_NODES,
    "FreeU (Advanced Plus) from FreeU_Advanced (the real pack)",
    "works with note",
    "Before or after the HiDiffusion nodes. It scales 640- and 1280-channel maps (SD1.x/SDXL widths) wherever they "
    "are, so also the maps RAU-Net shrinks. The seed pack's load-order workaround is not needed: both packs only "
    "use ComfyUI's block patches. Where RAU-Net shrinks the middle block to 1x1 (very small images: SD1.x with the "
    "CA downscale, both sides 256 px or less), FreeU_Advanced turns that map into NaN; the run stops at its first "
    "step with a message naming the sizes.",
)
@pytest.mark.parametrize("order", ["freeu_first", "freeu_last"])
def test_freeu_advanced(pack, order):
    freeu = freeu_advanced_node(load_third_party("FreeU_Advanced"))
    model = fresh_model("sd15", model_channels=FREEU_ADVANCED_WIDTH)
    ours = ours_in_a_graph()
    chain = [freeu, *ours] if order == "freeu_first" else [*ours, freeu]
    size = (37, 53)  # the middle block is 2x2 while RAU-Net is active
    both, calls, msw_calls = through_executor(model, chain, KSAMPLER, size, record=True)
    assert torch.isfinite(both).all()
    check_gating(model, calls, msw_calls, *size)
    assert different(both, through_executor(model, ours, KSAMPLER, size)[0])  # FreeU acted
    assert different(both, through_executor(model, [freeu], KSAMPLER, size)[0])  # HiDiffusion acted


@compat(OTHER_NODES, "FreeU (Advanced Plus) from FreeU_Advanced (the real pack)", "works with note")
def test_freeu_advanced_on_a_one_token_middle_block_stops_with_a_clear_message(pack):
    freeu = freeu_advanced_node(load_third_party("FreeU_Advanced"))
    model = fresh_model("sd15", model_channels=FREEU_ADVANCED_WIDTH)
    with pytest.raises(AssertionError) as error:  # run_prompt's report of ComfyUI's execution_error
        through_executor(model, [*ours_in_a_graph(), freeu], KSAMPLER, (21, 29))  # the middle block is 1x1
    message = str(error.value)
    assert "WAS_FreeU (" in message and "turns a 1x1 map into NaN" in message and "21x29 latent" in message


# --- PAG and SAG -------------------------------------------------------------------------------


def pag(model):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    return PerturbedAttentionGuidance.execute(model, 3.0).result[0]


def sag(model):
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    return SelfAttentionGuidance.execute(model, 0.8, 2.0).result[0]


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


def pag_change(seen, sigma: float) -> float:
    """How much PAG's perturbed pass differs from the cond half of the main pass at ``sigma``
    (relative; float noise between the two batches is about 3e-7)."""
    at = {batch: h for s, batch, h in seen if abs(s - sigma) <= 1e-4 * sigma}
    cond = at[(1, 0)][1]
    return float((at[(0,)][0] - cond).abs().max() / cond.abs().max())


PAG_NOTE = (
    "PAG's extra UNet pass runs with the HiDiffusion patches at the same sigma. PAG perturbs the middle block's "
    "self-attention; where RAU-Net shrinks that block to one token (very small images) self-attention is already "
    "the identity, so PAG changes nothing at those steps."
)


@compat(OTHER_NODES, "Perturbed-Attention Guidance (core PAG)", "works with note", PAG_NOTE)
@pytest.mark.parametrize("order", ["pag_first", "pag_last"])
def test_pag(pack, order):
    model = tiny_model("sd15")
    both = hidiffusion(pack, pag(model)) if order == "pag_first" else pag(hidiffusion(pack, model))
    clone, calls = recorded(both)
    clone, seen = last_block_features(clone)
    result = sample(clone, "sd15", 37, 53)
    assert torch.isfinite(result).all()
    # PAG's own pass (cond only) ran at the first sigma with RAD's size: 37x53 -> 10x14 ...
    assert sizes(calls, 3, FIRST_SIGMA, (0,)) == {(10, 14)}
    assert sizes(calls, 3, FIRST_SIGMA, (1, 0)) == {(10, 14)}
    # ... and its perturbation acted there (the tiny model's attention is nearly uniform, so
    # the change is small on the image, but 50x the float noise on the features)
    assert pag_change(seen, FIRST_SIGMA) > 4e-6
    assert different(result, sample_once("PAG", lambda: pag(model), "sd15", 37, 53))  # HiDiffusion acted


@compat(OTHER_NODES, "Perturbed-Attention Guidance (core PAG)", "works with note")
def test_pag_has_nothing_to_perturb_in_a_one_token_middle_block(pack):
    model = tiny_model("sd15")
    stock, stock_seen = last_block_features(pag(model))
    sample(stock, "sd15", 21, 29, steps=1)
    ours, seen = last_block_features(pag(hidiffusion(pack, model)))
    sample(ours, "sd15", 21, 29, steps=1)
    assert pag_change(stock_seen, FIRST_SIGMA) > 4e-6  # stock: a 3x4 middle block
    assert pag_change(seen, FIRST_SIGMA) < 4e-6  # RAD + CA: a 1x1 middle block, attention is the identity


@compat(
    OTHER_NODES,
    "Self-Attention Guidance (core SAG)",
    "works with note",
    "SAG's extra pass runs with the HiDiffusion patches. SAG guesses the middle block's grid from its token "
    "count; where RAU-Net shrinks that block below what SAG can read (fewer than 4 tokens: very small images, "
    "e.g. SD1.x with the CA downscale and a side of 256 px or less), the run is refused before its first step "
    "with a message naming the sizes instead of SAG's TypeError (mid-run only where another node also changes "
    "the sizes or the sampler picks its own sigmas).",
)
@pytest.mark.parametrize("order", ["sag_first", "sag_last"])
def test_sag(pack, order):
    model = tiny_model("sd15")
    both = hidiffusion(pack, sag(model)) if order == "sag_first" else sag(hidiffusion(pack, model))
    clone, calls = recorded(both)
    result = sample(clone, "sd15", 37, 53)
    assert torch.isfinite(result).all()
    # SAG's own pass ([uncond] alone, so its index is 0) ran at the first sigma with RAD's size: 37x53 -> 10x14
    assert sizes(calls, 3, FIRST_SIGMA, (0,)) == {(10, 14)}
    assert different(result, sample_once("SAG", lambda: sag(model), "sd15", 37, 53))
    assert different(result, hidiffusion_alone(pack, "sd15", 37, 53))


@compat(
    OTHER_NODES,
    "Self-Attention Guidance (core SAG)",
    "works with note",
)
def test_sag_on_a_middle_block_too_small_for_it_stops_with_a_clear_message(pack):
    model = tiny_model("sd15")
    # Stock SAG reads this size's 3x5 middle block ...
    assert torch.isfinite(sample(sag(model), "sd15", 24, 40, steps=2)).all()
    # ... but with RAD + CA the middle block is 1x2, which SAG cannot factor.
    with pytest.raises(ValueError) as error:
        sample(sag(hidiffusion(pack, model)), "sd15", 24, 40, steps=2)
    message = str(error.value)
    assert "Self-Attention Guidance (SAG) cannot rebuild its attention map from 2 token(s)" in message
    assert "24x40 latent" in message and "middle block to 1x2" in message
    # the same model samples once SAG is gone, and RAU-Net alone is unaffected by the failed run
    assert torch.isfinite(sample(hidiffusion(pack, model), "sd15", 24, 40, steps=2)).all()


# --- HyperTile ---------------------------------------------------------------------------------


def hypertile(model, max_depth: int = 0):
    """Core HyperTile with 4-token tiles (tile_size 32) and no random choice (swap_size 1)."""
    from comfy_extras.nodes_hypertile import HyperTile

    out = HyperTile.execute(model, 32, 1, max_depth, False)
    return out.result[0] if hasattr(out, "result") else out[0]


@compat(
    OTHER_NODES,
    "HyperTile (core) with MSW-MSA",
    "works with note",
    "HyperTile tiles the query tokens, so MSW-MSA cannot window the calls HyperTile tiles: those run exactly as "
    "without MSW-MSA, and the log says so once per block and run. Blocks HyperTile leaves alone (deeper than its "
    "max_depth) are windowed as usual.",
)
@pytest.mark.parametrize("order", ["hypertile_first", "hypertile_last"])
def test_hypertile_with_msw_msa(pack, logs, order):
    model = tiny_model("sd15")
    level0_and_1 = {"input_blocks": "1,2,4,5", "output_blocks": "6,7,8,9,10,11"}
    if order == "hypertile_first":
        both = msw(pack, hypertile(model), **level0_and_1)
    else:
        both = hypertile(msw(pack, model, **level0_and_1))
    level1_only = msw(pack, hypertile(model), input_blocks="4,5", output_blocks="6,7,8")
    clone, calls = windowed(both)
    result = sample(clone, "sd15", 21, 29)
    # the calls HyperTile tiled (level 0) ran exactly as without MSW-MSA there ...
    assert torch.equal(result, sample(level1_only, "sd15", 21, 29))
    # ... and MSW-MSA still windowed level 1, every call
    assert {block for block, _, done in calls if done} == {("input", 4), ("input", 5)} | {
        ("output", i) for i in (6, 7, 8)
    }
    assert not any(done for block, _, done in calls if block in {("input", 1), ("input", 2), ("output", 9)})
    assert different(result, sample(hypertile(model), "sd15", 21, 29))
    for block in ("input block 1:", "input block 2:", "output block 9:", "output block 10:", "output block 11:"):
        told = [m for m in logs.messages(logging.WARNING) if "MSW-MSA skipped on " + block in m]
        assert len(told) == 1, (block, told)
        assert "another patch changed the attention tokens" in told[0]


@compat(
    OTHER_NODES,
    "HyperTile (core) with RAU-Net",
    "works",
    "HyperTile finds its levels from the latent size; levels RAU-Net shrinks it tiles only when their size "
    "matches one of its depths, and MSW-MSA skips those calls as above.",
)
def test_hypertile_with_raunet(pack):
    model = tiny_model("sd15")
    ht = hypertile(model, max_depth=2)
    both = hidiffusion(pack, ht)
    clone, calls = recorded(both)
    queries = []

    def after_hypertile(n, context, value, extra_options):  # registered after HyperTile's, sees its tiles
        if extra_options["block"] == ("input", 4) and float(extra_options["sigmas"].max()) > 14:
            queries.append(tuple(n.shape[:2]))
        return n, context, value

    clone.set_model_attn1_patch(after_hypertile)
    result = sample(clone, "sd15", 24, 40)
    assert torch.isfinite(result).all()
    assert sizes(calls, 3, FIRST_SIGMA) == {(6, 10)}
    # RAD's 6x10 map at level 1 has the token count of HyperTile's depth 2, so HyperTile tiled it:
    # cond + uncond, 2 tiles each, of 30 tokens
    assert queries == [(4, 30)]
    assert different(result, sample(ht, "sd15", 24, 40))
    assert different(result, hidiffusion_alone(pack, "sd15", 24, 40))


# --- Deep Shrink -------------------------------------------------------------------------------


def deep_shrink(model, block: int):
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    return PatchModelAddDownscale.execute(model, block, 2.0, 0.0, 0.35, True, "bicubic", "bicubic").result[0]


@compat(
    OTHER_NODES,
    "Deep Shrink (core PatchModelAddDownscale) applied before RAU-Net on a block RAU-Net uses",
    "refused with message",
    "Only one effect may own a block; the message says which and how to move one of them.",
)
def test_deep_shrink_before_on_the_same_block_is_refused(pack):
    with pytest.raises(ValueError, match="Deep Shrink .* on input block 3 .*Only one effect may own a block"):
        raunet(pack, deep_shrink(tiny_model("sd15"), 3))


@compat(
    OTHER_NODES,
    "Deep Shrink (core PatchModelAddDownscale) applied after RAU-Net, or on another block",
    "works with note",
    "Both shrink the deep blocks and their factors compound; the log warns once per run.",
)
def test_deep_shrink_after_on_the_same_block_runs_and_warns_once_per_run(pack, logs):
    model = tiny_model("sd15")
    later = deep_shrink(raunet(pack, model, **RAD_ONLY), 3)
    clone, calls = recorded(later)
    for _ in range(2):
        assert torch.isfinite(sample(clone, "sd15", 37, 53)).all()
    # compounding: RAD's 10x14, then Deep Shrink halves it after the skip
    assert sizes(calls, 4, FIRST_SIGMA) == {(5, 7)}
    warnings = [m for m in logs.messages(logging.WARNING) if "Deep Shrink" in m]
    assert len(warnings) == 2 and all("input block 3 is active in this run" in m for m in warnings)


# --- an attn2 replace patch like IP-Adapter's ------------------------------------------------------


class SharedRecord(list):
    """A list that ModelPatcher.clone's deep copy of model_options shares instead of copying."""

    def __deepcopy__(self, memo: dict) -> SharedRecord:
        return self


class IPAdapterLikeAttn2:
    """A faithful stand-in for ComfyUI_IPAdapter_plus' attn2 replace (``Attn2Replace`` ->
    ``ipadapter_attention``): the text cross-attention, plus attention to image tokens
    picked per cond/uncond chunk (``cond_or_uncond``) and repeated per prompt, times a
    weight, inside a sigma range, returned in q's dtype. The image tokens stand for the
    output of the adapter's ``to_k_ip``/``to_v_ip`` for this block's width."""

    def __init__(self, weight: float = 1.0, sigma_start: float = 1e9, sigma_end: float = 0.0) -> None:
        self.weight = weight
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.tokens = SharedRecord()

    def image_tokens(self, width: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(width * 10 + chunk)
        return torch.randn(1, 4, width, generator=generator), torch.randn(1, 4, width, generator=generator)

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = comfy_attention.optimized_attention(q, k, v, heads)
        sigma = float(extra_options["sigmas"][0])
        if self.sigma_end <= sigma <= self.sigma_start:
            chunks = extra_options["cond_or_uncond"]
            per_prompt = q.shape[0] // len(chunks)
            pairs = [self.image_tokens(q.shape[-1], chunk) for chunk in chunks]
            ip_k = torch.cat([pk.repeat(per_prompt, 1, 1) for pk, _ in pairs]).to(q)
            ip_v = torch.cat([pv.repeat(per_prompt, 1, 1) for _, pv in pairs]).to(q)
            out = out + self.weight * comfy_attention.optimized_attention(q, ip_k, ip_v, heads)
            self.tokens.append((tuple(extra_options["block"]), q.shape[1]))
        return out.to(dtype=q.dtype)


def with_ip_adapter(model, patch: IPAdapterLikeAttn2):
    """Install the patch on every cross-attention block, as IP-Adapter does (SD1.x layout)."""
    clone = model.clone()
    for index in (1, 2, 4, 5, 7, 8):
        clone.set_model_attn2_replace(patch, "input", index)
    clone.set_model_attn2_replace(patch, "middle", 0)
    for index in range(3, 12):
        clone.set_model_attn2_replace(patch, "output", index)
    return clone


@compat(
    OTHER_NODES,
    "attn2 replace patches (IP-Adapter and the like)",
    "works",
    "Before or after the HiDiffusion nodes; the cross-attention patch sees the shrunk maps while RAU-Net is active.",
)
def test_ip_adapter_like_attn2_patch(pack):
    model = tiny_model("sd15")
    last_patch = IPAdapterLikeAttn2()
    first = hidiffusion(pack, with_ip_adapter(model, IPAdapterLikeAttn2()))
    last, msw_calls = windowed(with_ip_adapter(hidiffusion(pack, model), last_patch))
    result = sample(first, "sd15", 21, 29)
    assert torch.isfinite(result).all()
    assert torch.equal(result, sample(last, "sd15", 21, 29))  # the order does not matter
    assert different(result, hidiffusion_alone(pack, "sd15", 21, 29))  # the attn2 patch acted
    assert different(result, sample(with_ip_adapter(model, IPAdapterLikeAttn2()), "sd15", 21, 29))  # ours acted
    # the attn2 patch saw RAD's 6x8 (and, after the CA pool, 3x4) at level 1, and MSW-MSA still windowed every call
    assert {tokens for block, tokens in last_patch.tokens if block == ("input", 4)} == {6 * 8, 11 * 15}
    assert {tokens for block, tokens in last_patch.tokens if block == ("input", 5)} == {3 * 4, 11 * 15}
    assert msw_calls and all(done for _, _, done in msw_calls)


# --- LoRA-style weight patches -------------------------------------------------------------------


def lora_model(family: str = "sd15"):
    """A tiny model of its own (weight seed 4242, sharp self-attention so windows matter):
    only these tests load LoRA onto it."""
    mm.unload_all_models()  # nothing patched left loaded: the weights read are the stored ones
    return sharp_attention_model(family, weight_seed=4242)


def with_lora(model, keys: list[str], strength: float = 0.8, seed: int = 5):
    """A clone with a diff-type weight patch on ``keys``, as LoRA loaders add them."""
    clone = model.clone()
    generator = torch.Generator().manual_seed(seed)
    state = model.model.state_dict()
    patches = {key: (torch.randn(state[key].shape, generator=generator) * 0.05,) for key in keys}
    assert sorted(clone.add_patches(patches, strength)) == sorted(keys)
    return clone, {key: state[key].detach().clone() + strength * diff[0] for key, diff in patches.items()}


def rad_input_and_output(model, family: str, height: int, width: int, rad_block: int = 3):
    """The map entering and leaving the RAD block in the first UNet call."""
    seen: dict[int, torch.Tensor] = {}
    clone = model.clone()

    def keep(h, options):
        if options["block"][1] in (rad_block - 1, rad_block) and float(options["sigmas"].max()) > 14:
            seen.setdefault(options["block"][1], h.clone())
        return h

    clone.set_model_input_block_patch(keep)
    sample(clone, family, height, width, steps=1)
    return seen[rad_block - 1], seen[rad_block]


def dilated_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """HiDiffusion's RAD as written in the paper: stride 4, dilation 2, padding 2."""
    return F.conv2d(x, weight.float(), bias.float(), stride=4, padding=2, dilation=2)


@compat(
    FORMATS,
    "LoRA-style weight patches (ModelPatcher.add_patches) on a RAD Downsample",
    "works",
    "RAD runs the model's own layer, so the patched weight is the one used.",
)
def test_lora_on_the_rad_downsample(pack):
    model = lora_model()
    key = "diffusion_model.input_blocks.3.0.op.weight"
    stored = model.model.state_dict()[key].clone()
    lora, weights = with_lora(raunet(pack, model, **RAD_ONLY, end_time=1.0), [key])
    bias = model.model.state_dict()["diffusion_model.input_blocks.3.0.op.bias"].clone()
    before, after = rad_input_and_output(lora, "sd15", 21, 29)
    assert after.shape[-2:] == (6, 8)
    torch.testing.assert_close(after, dilated_conv(before, weights[key], bias), rtol=1e-5, atol=1e-6)
    assert different(after, dilated_conv(before, stored, bias))  # the LoRA changed it
    assert torch.isfinite(sample(lora, "sd15", 21, 29)).all()


@compat(
    FORMATS,
    "LoRA-style weight patches on the attention of MSW-MSA blocks",
    "works",
    "MSW-MSA receives q, k, v already projected by the patched layers.",
)
def test_lora_on_windowed_attention(pack):
    model = lora_model()
    keys = [
        f"diffusion_model.{blocks}.1.transformer_blocks.0.attn1.{name}.weight"
        for blocks in ("input_blocks.1", "input_blocks.2", "output_blocks.9")
        for name in ("to_q", "to_k", "to_v", "to_out.0")
    ]
    patched = msw(pack, raunet(pack, model), yaml_parameters="shift_mode: none")
    lora, _ = with_lora(patched, keys)

    def reference(q, k, v, extra_options):
        _, _, height, width = extra_options["activations_shape"]
        return naive_windowed(q, k, v, height, width, 0, heads=extra_options["n_heads"])

    expected = lora.clone()
    for key in attn1_replaces(patched):
        expected.set_model_attn1_replace(reference, *key)
    result = sample(lora, "sd15", 21, 29, steps=2)
    unwindowed, _ = with_lora(raunet(pack, model), keys)
    reference, without_windows = (sample(m, "sd15", 21, 29, steps=2) for m in (expected, unwindowed))
    assert_matches_a_decisive_reference(result, reference, without_windows, atol=1e-4, rtol=1e-4)
    assert different(result, sample(patched, "sd15", 21, 29, steps=2))  # the LoRA changed it


# --- manual-cast and fp8 weights -------------------------------------------------------------------


def stored_as(family: str, storage: torch.dtype):
    """The tiny model with weights stored in ``storage`` and computed in float32 (ComfyUI
    picks ``comfy.ops.manual_cast`` for that), and a float32 twin with the very same values."""
    models = []
    for dtype, cast in ((storage, torch.float32), (torch.float32, None)):
        config = dict(CONFIGS[family], dtype=dtype)
        model_config = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[family](config)
        model_config.set_inference_dtype(dtype, cast)
        models.append(model_config.get_model({}))
    cast_model, twin = models
    generator = torch.Generator().manual_seed(77)
    with torch.no_grad():
        for (_, stored), (_, plain) in zip(cast_model.named_parameters(), twin.named_parameters(), strict=True):
            stored.copy_((torch.randn(stored.shape, generator=generator) * 0.05).to(storage))
            plain.copy_(stored.float())
    assert cast_model.diffusion_model.input_blocks[3][0].op.__class__.__module__ == "comfy.ops"
    assert "manual_cast" in type(cast_model.diffusion_model.input_blocks[3][0].op).__qualname__
    return tuple(
        comfy.model_patcher.ModelPatcher(m, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        for m in (cast_model, twin)
    )


@compat(
    FORMATS,
    "manual-cast weights (bf16 stored, computed in float32: comfy.ops.manual_cast)",
    "works",
    "Same result as float32 weights of the same values.",
)
def test_manual_cast_bf16(pack):
    check_cast(pack, torch.bfloat16)


@compat(
    FORMATS,
    "fp8 weights (float8_e4m3fn stored, manual-cast to float32)",
    "works",
    "Same result as float32 weights of the same values.",
)
def test_manual_cast_fp8(pack):
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8_e4m3fn")
    check_cast(pack, torch.float8_e4m3fn)


def check_cast(pack, storage: torch.dtype) -> None:
    cast, twin = stored_as("sd15", storage)
    result = sample(hidiffusion(pack, cast), "sd15", 21, 29)
    assert torch.isfinite(result).all()
    reference = sample(hidiffusion(pack, twin), "sd15", 21, 29)
    assert_matches_a_decisive_reference(result, reference, sample(cast, "sd15", 21, 29), atol=1e-4, rtol=1e-4)
    op = cast.model.diffusion_model.input_blocks[3][0].op
    before, after = rad_input_and_output(raunet(pack, cast, **RAD_ONLY), "sd15", 21, 29)
    torch.testing.assert_close(after, dilated_conv(before, op.weight, op.bias), rtol=1e-5, atol=1e-6)


# --- a quantised Downsample (GGUF-like) ------------------------------------------------------------


class Int8Conv(torch.nn.Module):
    """A 3x3 stride-2 conv whose weight exists only as int8 plus a per-channel scale and is
    dequantised inside its own forward, as GGUF ops do: there is no ``weight`` to read."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        scale = weight.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
        self.register_buffer("qweight", torch.round(weight / scale).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("qbias", conv.bias.detach().float().clone())
        self.stride, self.padding = conv.stride, conv.padding

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            x, self.dequantized().to(x.dtype), self.qbias.to(x.dtype), stride=self.stride, padding=self.padding
        )


@compat(
    FORMATS,
    "a quantised Downsample op that dequantises in its own forward (GGUF and the like)",
    "works",
    "RAD never reads conv weights; it runs the layer on every other pixel.",
)
def test_quantised_downsample(pack):
    base = fresh_model("sd15").model
    downsample = base.diffusion_model.input_blocks[3][0]
    downsample.op = Int8Conv(downsample.op)
    assert not hasattr(downsample.op, "weight")
    model = comfy.model_patcher.ModelPatcher(
        base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    before, after = rad_input_and_output(raunet(pack, model, **RAD_ONLY), "sd15", 21, 29)
    assert after.shape[-2:] == (6, 8)
    torch.testing.assert_close(
        after, dilated_conv(before, downsample.op.dequantized(), downsample.op.qbias), rtol=1e-5, atol=1e-6
    )
    result = sample(hidiffusion(pack, model), "sd15", 21, 29)
    assert torch.isfinite(result).all() and different(result, sample(model, "sd15", 21, 29))


# --- model kinds -------------------------------------------------------------------------------------


def auto_uses_rad(pack, kind: str, advanced: str = "") -> bool:
    """Whether the auto node puts RAD on this model at 640x512 px with a 128 px native size
    (SDXL below 4096 px, where only aggressive mode runs RAD)."""
    patched = (
        pack["ApplyHiDiffusion"]
        .execute(
            model=tiny_model(kind),
            width=640,
            height=512,
            advanced=f"native_resolution: 128\n{advanced}",
            raunet=True,
            msw_msa=True,
        )
        .result[0]
    )
    return bool(rad_patches(patched))


def rad_patches(model) -> list:
    """RAU-Net's Downsample handlers (RAD) on a patched clone."""
    handlers = model.model_options.get("transformer_options", {}).get("patches", {})
    return [
        h
        for _, h in handlers.get("forward_timestep_embed_patch", [])
        if type(h).__name__ == "ResolutionAwareDownsample"
    ]


@compat(
    FORMATS,
    "EDM models (Playground v2.5-style: sigmas 0.002 to 80)",
    "works",
    "Time ranges are sampling percent of the model's own continuous noise schedule. The auto node turns "
    "aggressive mode off for EDM models, as the official method does for Playground.",
)
def test_edm_model(pack):
    kind = "sdxl_playground"
    assert tiny_model(kind).model.model_type.name == "EDM"
    check_run(pack, kind, (24, 32), lambda m: sample(m, kind, 24, 32, steps=6, scheduler="karras", seed=3))
    assert auto_uses_rad(pack, "sdxl") and not auto_uses_rad(pack, kind)
    assert auto_uses_rad(pack, kind, "aggressive: true")


@compat(FORMATS, "v-prediction EDM models (sigma_max read from the checkpoint)", "works")
def test_v_prediction_edm_model(pack):
    kind = "sdxl_vpred_edm"
    sampling = tiny_model(kind).get_model_object("model_sampling")
    assert tiny_model(kind).model.model_type.name == "V_PREDICTION_EDM" and float(sampling.sigma_max) == pytest.approx(
        120.0
    )
    check_run(pack, kind, (24, 32), lambda m: sample(m, kind, 24, 32, steps=6, seed=3))
    assert auto_uses_rad(pack, kind)


@compat(
    FORMATS,
    "inpainting UNets (9 input channels) with a noise mask",
    "works",
    "The masked area is sampled with HiDiffusion, the rest is kept. The auto node turns aggressive mode off "
    "for them, as the official method does for inpainting models.",
)
def test_inpainting_unet(pack):
    kind = "sdxl_inpaint"
    first = tiny_model(kind).get_model_object("diffusion_model").input_blocks[0][0]
    assert first.in_channels == 9
    mask = torch.zeros(1, 24, 32)
    mask[..., 16:] = 1.0

    def run(model):
        return sample(model, kind, 24, 32, steps=6, seed=3, noise_mask=mask)

    check_run(pack, kind, (24, 32), run)
    patched = hidiffusion(pack, tiny_model(kind), kind)
    result, unpatched = run(patched), run(tiny_model(kind))
    assert torch.equal(result[..., :16], unpatched[..., :16])  # kept: the input latent
    assert different(result[..., 16:], unpatched[..., 16:])
    assert not auto_uses_rad(pack, kind) and auto_uses_rad(pack, kind, "aggressive: true")


@compat(
    FORMATS,
    "the SDXL refiner layout (four levels, attention on the middle two)",
    "works",
    "Block pairs and windowed blocks come from the structure: RAD at input 3 / output 8, windows on level 1.",
)
def test_refiner_layout(pack):
    kind = "sdxl_refiner"
    assert type(tiny_model(kind).model).__name__ == "SDXLRefiner"
    check_run(pack, kind, (24, 32), lambda m: sample(m, kind, 24, 32, steps=6, seed=3))
    patched = (
        pack["ApplyHiDiffusion"]
        .execute(
            model=tiny_model(kind), width=640, height=512, advanced="native_resolution: 128", raunet=True, msw_msa=True
        )
        .result[0]
    )
    assert sorted(tuple(key[:2]) for key in attn1_replaces(patched)) == [
        ("input", 4),
        ("input", 5),
        ("output", 6),
        ("output", 7),
        ("output", 8),
    ]
    assert [p.blocks for p in rad_patches(patched)] == [frozenset({3})]
    auto_nodes = pack_module("hidiff.comfyui.auto_nodes")
    assert auto_nodes.make_plan(tiny_model(kind), 640, 512, None, "native_resolution: 128")[0].rad_pair == (3, 8)
    assert torch.isfinite(sample(patched, kind, 64, 80, steps=2)).all()


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


# --- samplers --------------------------------------------------------------------------------------

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


@compat(SAMPLERS, "ancestral and SDE samplers: euler_ancestral", "works")
def test_sampler_euler_ancestral(pack):
    check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=4, sampler="euler_ancestral", seed=3))


@compat(SAMPLERS, "ancestral and SDE samplers: dpmpp_sde, dpmpp_2m_sde", "works")
@pytest.mark.parametrize("sampler", ["dpmpp_sde", "dpmpp_2m_sde"])
def test_sampler_sde(pack, sampler):
    check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=4, sampler=sampler, seed=3))


@compat(
    SAMPLERS,
    "second-order samplers: heun, dpmpp_2s_ancestral",
    "works",
    "Each intermediate evaluation is gated by its own sigma.",
)
@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2s_ancestral"])
def test_sampler_second_order(pack, sampler):
    calls = check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=4, sampler=sampler, seed=3))
    # 4 steps, each but the last (to sigma 0) with a second evaluation (heun: at the next sigma; dpmpp_2s_ancestral
    # with eta 1: at sqrt(sigma * sigma_down), which is again the next sigma), in each of the two patched runs
    assert sum(1 for call in calls if call.block == 3) == 2 * 7


@compat(
    SAMPLERS,
    "karras and exponential schedulers",
    "works",
    "RAU-Net and MSW-MSA follow each call's own sigma, however the schedule spaces them.",
)
@pytest.mark.parametrize("scheduler", ["karras", "exponential"])
def test_schedulers(pack, scheduler):
    check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=6, scheduler=scheduler, seed=3))


def to_model_sampling(family: str):
    return tiny_model(family).get_model_object("model_sampling")


@compat(SAMPLERS, "cfg = 1 (ComfyUI skips the uncond)", "works")
def test_cfg_one(pack):
    calls = check_run(pack, "sdxl", (29, 21), lambda m: sample(m, "sdxl", 29, 21, steps=4, cfg=1.0, seed=4))
    assert {call.batch for call in calls} == {(0,)}


def sample_conds(model, family: str, height: int, width: int, negative_repeats: int, **kwargs) -> torch.Tensor:
    """``harness.sample`` with the negative prompt's tokens repeated: the same conditioning,
    but more than 4x longer than the positive, so ComfyUI runs cond and uncond as separate
    batches (``CONDCrossAttn.can_concat``)."""
    latent = torch.zeros(1, 4, height, width)
    noise = comfy.sample.prepare_noise(latent, 0)
    positive = conditioning(family, seed=11)
    negative = conditioning(family, seed=12)
    negative = [[negative[0][0].repeat(1, negative_repeats, 1), negative[0][1]]]
    return comfy.sample.sample(
        model, noise, 4, 5.0, "euler", "normal", positive, negative, latent, seed=0, disable_pbar=True, **kwargs
    )


@compat(
    SAMPLERS,
    "separate cond/uncond batches",
    "works",
    "Cond and uncond of one step share RAU-Net's state and MSW-MSA's windows, however ComfyUI batches them.",
)
def test_separate_cond_and_uncond_batches(pack):
    model = tiny_model("sd15")
    patched, msw_calls, calls = staged(pack, model)
    patched, features = last_block_features(patched)
    separate = sample_conds(patched, "sd15", 21, 29, negative_repeats=5)
    assert {call.batch for call in calls} == {(0,), (1,)}
    check_gating(model, calls, msw_calls, 21, 29)
    separate_features = per_chunk(features)
    calls.clear()
    features.clear()
    batched = sample_conds(patched, "sd15", 21, 29, negative_repeats=1)
    assert {call.batch for call in calls} == {(1, 0)}
    # Repeating the text tokens changes no attention result, so both runs compute the same
    # features for cond and uncond at every step: float noise is about 3e-7, while windows
    # chosen per call instead of per step differ by about 6e-5.
    batched_features = per_chunk(features)
    assert separate_features.keys() == batched_features.keys()
    for key, h in batched_features.items():
        assert float((separate_features[key] - h).abs().max() / h.abs().max()) < 5e-6, key
    unpatched = sample_conds(model, "sd15", 21, 29, negative_repeats=5)
    assert_matches_a_decisive_reference(separate, batched, unpatched, atol=1e-4, rtol=1e-4)


def per_chunk(features) -> dict:
    """{(sigma, 0 = cond / 1 = uncond): features} from :func:`last_block_features`."""
    return {(round(sigma, 4), chunk): h[index] for sigma, batch, h in features for index, chunk in enumerate(batch)}


@compat(SAMPLERS, "partial sampling: start_step/last_step (KSamplerAdvanced)", "works")
def test_partial_start_and_last_step(pack):
    def run(m):
        return sample(m, "sd15", 21, 29, steps=8, seed=5, start_step=1, last_step=6)

    calls = check_run(pack, "sd15", (21, 29), run)
    sigmas = [float(s) for s in comfy.samplers.calculate_sigmas(to_model_sampling("sd15"), "normal", 8)]
    assert {round(call.sigma, 4) for call in calls} == {round(s, 4) for s in sigmas[1:6]}


@compat(
    SAMPLERS,
    "partial sampling: denoise < 1",
    "works",
    "Times are sampling percent, so a low denoise skips the early part.",
)
def test_partial_denoise(pack):
    calls = check_run(pack, "sd15", (21, 29), lambda m: sample(m, "sd15", 21, 29, steps=6, seed=5, denoise=0.8))
    assert max(call.sigma for call in calls) < FIRST_SIGMA


RESTART_SIGMAS = [14.0, 8.0, 4.0, 8.0, 4.0, 1.0, 0.0]


@compat(
    SAMPLERS,
    "Restart-style sigmas (sigma rising again mid-run, custom sampling)",
    "works",
    "Nothing is carried from one call or run to the next: every call is gated by its own sigma.",
)
def test_restart_style_sigmas(pack):
    model = tiny_model("sd15")
    patched = msw(
        pack,
        raunet(pack, model, time_mode="sigma", start_time=20.0, end_time=6.0, ca_start_time=20.0, ca_end_time=10.0),
        time_mode="sigma",
        start_time=5.0,
        end_time=0.0,
    )
    recording, calls = recorded(patched)
    recording, msw_calls = windowed(recording)

    def run(m):
        latent = torch.zeros(1, 4, 21, 29)
        return comfy.sample.sample_custom(
            m,
            comfy.sample.prepare_noise(latent, 6),
            5.0,
            comfy.samplers.sampler_object("euler"),
            torch.tensor(RESTART_SIGMAS),
            conditioning("sd15", seed=11),
            conditioning("sd15", seed=12),
            latent,
            disable_pbar=True,
            seed=6,
        )

    first = run(recording)
    assert torch.isfinite(first).all()
    rad = {(call.sigma, call.size) for call in calls if call.block == 3}
    assert rad == {(14.0, (6, 8)), (8.0, (6, 8)), (4.0, (11, 15)), (1.0, (11, 15))}
    ca = {(call.sigma, call.size) for call in calls if call.block == 4}
    assert ca == {(14.0, (3, 4)), (8.0, (6, 8)), (4.0, (11, 15)), (1.0, (11, 15))}
    assert {(sigma, done) for _, sigma, done in msw_calls} == {(14.0, False), (8.0, False), (4.0, True), (1.0, True)}
    assert sum(1 for call in calls if call.block == 3 and call.sigma == 8.0) == 2  # both visits of sigma 8
    assert torch.equal(first, run(recording))  # no state left from the first run
    assert torch.equal(first, run(patched))
    assert different(first, run(model))


RESTART_SEGMENTS = "[2,1,0.5,6.0]"
"""Restart sampling's segment syntax [restarts, steps, sigma min, sigma max]: twice from sigma
0.5 back up to 6, into RAU-Net's range again (RAD until 40 %: sigma 2.9 on the tiny models)."""


@compat(
    SAMPLERS,
    "KRestartSamplerSimple from ComfyUI_restart_sampling (the real pack)",
    "works",
    "Each call is gated by its own sigma, so a restart back into RAU-Net's range runs RAU-Net again; the seed "
    "recommends restart segments that start after RAU-Net ends (the a1111 preset does).",
)
def test_restart_sampling(pack):
    load_third_party("ComfyUI_restart_sampling")
    model = tiny_model("sd15")
    size = (21, 29)
    restart = ("KRestartSamplerSimple", {**KSAMPLER[1], "steps": 6, "segments": RESTART_SEGMENTS})
    result, calls, msw_calls = through_executor(model, ours_in_a_graph(), restart, size, record=True)
    assert torch.isfinite(result).all()
    check_gating(model, calls, msw_calls, *size)
    rad_until = to_sigma(model)(RAD_END)
    on = [call.sigma >= rad_until for call in calls if call.block == 3]
    assert any(not before and after for before, after in zip(on, on[1:]))  # RAD came back with a restart
    assert torch.equal(result, through_executor(model, ours_in_a_graph(), restart, size)[0])
    plain = ("KSampler", {**KSAMPLER[1], "steps": 6})
    assert different(result, through_executor(model, ours_in_a_graph(), plain, size)[0])  # the restarts acted
    assert different(result, through_executor(model, [], restart, size)[0])  # HiDiffusion acted
