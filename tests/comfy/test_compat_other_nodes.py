"""Compatibility with other nodes on the same model: FreeU, FreeU_Advanced, PAG, SAG,
HyperTile, Deep Shrink and an IP-Adapter-like attn2 patch.

See compat_common for what every test checks and how the table is made from them.
"""

from __future__ import annotations

import logging

import comfy.ldm.modules.attention as comfy_attention
import pytest
import torch
from compat_common import (
    FIRST_SIGMA,
    KSAMPLER,
    OTHER_NODES,
    RAD_ONLY,
    check_gating,
    compat,
    different,
    hidiffusion,
    hidiffusion_alone,
    last_block_features,
    msw,
    ours_in_a_graph,
    raunet,
    recorded,
    sample_once,
    sizes,
    through_executor,
    windowed,
)
from harness import (
    fresh_model,
    load_third_party,
    placed_values,
    sample,
    tiny_model,
)

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


FREEU_ADVANCED_WIDTH = 160
"""The tiny SD1.5 layout at 160/320/640/640 channels: FreeU_Advanced acts only on maps of 640
and 1280 channels (SD1.x and SDXL widths), so on the 32-channel tiny model it would do nothing."""


def freeu_advanced_node(registry: dict) -> tuple[str, dict]:
    """WAS_FreeU with every widget at what a newly placed node shows (a combo's first option,
    else the default), as the frontend queues it, and target_block all."""
    return "WAS_FreeU", {**placed_values(registry["WAS_FreeU"]), "target_block": "all"}


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
