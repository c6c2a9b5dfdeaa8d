"""Every call of a real sampling run, checked against a reference written here.

A final latent says little about one call: a wrong shift, a wrong head split or a
residual added at the wrong block can move it by less than a loose tolerance. Here a
recorder wraps each of the pack's patches on a clone, lets it run exactly as it would,
and compares what it returned, call by call, with an independent reference computed in
the test from the same inputs. Every check also asks that the reference be far (at least
:data:`MARGIN`, ten times :data:`TOL`) from each wrong answer it rules out: attention
over the whole grid, the other window shifts, another resampling mode, a residual left
out or taken from another block. The models are the tiny ones with sharp self-attention
(``harness.sharp_attention_model``), where window layouts really differ.

The feature map each block really receives is read by forward pre-hooks on the tiny
model's layers (test-only), not from the ``activations_shape`` the patch itself reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import comfy.samplers
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from harness import control_hint, pack_module, sample, sharp_attention_model, tiny_controlnet
from node_settings import RAUNET_SD15, RAUNET_SDXL
from reference import naive_windowed, plain_attention
from test_controlnet_comfy import tiny_t2i_adapter
from test_msw_msa_comfy import PRESET_BLOCKS, apply_msw, replaces_of

TOL = 1e-4
"""Largest difference allowed between a patch's output and its reference (float32)."""
MARGIN = 10 * TOL
"""Smallest difference required between the reference and every answer it rules out."""

RAUNET_OF = {"sd15": RAUNET_SD15, "sdxl": RAUNET_SDXL}


def raunet(pack, model, **overrides):
    return pack["ApplyRAUNet"].execute(model=model, **dict(RAUNET_OF[family_of(model)], **overrides)).result[0]


def family_of(model) -> str:
    return "sdxl" if len(model.get_model_object("diffusion_model").input_blocks) == 9 else "sd15"


def sigma_of(options: dict) -> float:
    return float(options["sigmas"].max())


def step_sigmas(model, steps: int) -> list[float]:
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", steps)
    return [float(s) for s in sigmas[:-1]]


def step_of(sigmas: list[float], sigma: float) -> int:
    return min(range(len(sigmas)), key=lambda i: abs(sigmas[i] - sigma))


def percent_sigma(model, percent: float) -> float:
    return float(model.get_model_object("model_sampling").percent_to_sigma(percent))


def patch_list(model, name: str) -> list:
    return model.model_options.setdefault("transformer_options", {}).setdefault("patches", {}).setdefault(name, [])


def replace_own(model, name: str, class_name: str, wrap) -> int:
    """Wrap each patch of class ``class_name`` in the clone's ``name`` list; returns how many."""
    patches = patch_list(model, name)
    found = 0
    for index, patch in enumerate(patches):
        if type(patch).__name__ == class_name:
            patches[index] = wrap(patch)
            found += 1
    return found


# --- what each block really receives ----------------------------------------------------


@dataclass
class BlockView:
    """The feature map and head count a SpatialTransformer received on its latest call."""

    grid: tuple[int, int] = (0, 0)
    heads: int = 0


@contextmanager
def transformer_inputs(model) -> Iterator[dict[tuple[str, int], BlockView]]:
    """{(kind, block): BlockView}, kept current by forward pre-hooks on the tiny model."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = model.get_model_object("diffusion_model")
    views: dict[tuple[str, int], BlockView] = {}
    handles = []
    groups = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    for kind, blocks in groups:
        for index, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    view = views.setdefault((kind, index), BlockView())

                    def hook(module, args, view=view):
                        view.grid = tuple(args[0].shape[-2:])
                        view.heads = module.transformer_blocks[0].attn1.heads

                    handles.append(layer.register_forward_pre_hook(hook))
    try:
        yield views
    finally:
        for handle in handles:
            handle.remove()


# --- MSW-MSA ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCall:
    """One attn1 call: where, when, what the output matched, and how far the rest were."""

    block: tuple[str, int, int]
    sigma: float
    batch: int
    grid: tuple[int, int]
    heads: int
    match: str
    error: float
    margin: float


def window_candidates(
    q, k, v, grid: tuple[int, int], heads: int, window_grids: tuple = ((2, 2),)
) -> dict[str, torch.Tensor]:
    """Whole-grid attention and the naive windowed attention at each distinct shift of each
    window grid (labelled "shift k" for the official 2x2, "RxC shift k" otherwise)."""
    height, width = grid
    candidates = {
        "whole grid": torch.cat(
            [plain_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], heads) for i in range(q.shape[0])]
        )
    }
    for rows, cols in window_grids:
        rolls = set()
        for shift in range(4):
            roll = ((math.ceil(height / rows) // 4) * shift, (math.ceil(width / cols) // 4) * shift)
            if roll not in rolls:
                rolls.add(roll)
                label = f"shift {shift}" if (rows, cols) == (2, 2) else f"{rows}x{cols} shift {shift}"
                candidates[label] = naive_windowed(q, k, v, height, width, shift, heads=heads, rows=rows, cols=cols)
    return candidates


def checking_windows(patched, views, expected_grid=None) -> tuple[object, list[WindowCall]]:
    """A clone whose MSW-MSA patches are each compared with every candidate on every call;
    ``expected_grid(height, width)`` adds the window grid the test expects to the 2x2 one."""
    calls: list[WindowCall] = []
    clone = patched.clone()
    for key, patch in list(replaces_of(patched).items()):

        def check(q, k, v, extra_options, patch=patch):
            out = patch(q, k, v, extra_options)
            block = tuple(extra_options["block"][:2])
            view = views[block]
            assert q.shape[1] == view.grid[0] * view.grid[1], (block, q.shape, view.grid)
            grids = ((2, 2),) if expected_grid is None else ((2, 2), expected_grid(*view.grid))
            errors = {
                name: (out - ref).abs().max().item()
                for name, ref in window_candidates(q, k, v, view.grid, view.heads, tuple(dict.fromkeys(grids))).items()
            }
            match = min(errors, key=errors.get)
            calls.append(
                WindowCall(
                    (*block, extra_options.get("block_index", 0)),
                    sigma_of(extra_options),
                    q.shape[0],
                    view.grid,
                    view.heads,
                    match,
                    errors[match],
                    min([e for name, e in errors.items() if name != match], default=math.inf),
                )
            )
            return out

        clone.set_model_attn1_replace(check, *key)
    return clone, calls


def assert_exact_and_decisive(calls: list) -> None:
    assert calls
    worst = max(calls, key=lambda c: c.error)
    assert worst.error <= TOL, worst
    closest = min(calls, key=lambda c: c.margin)
    assert closest.margin >= MARGIN, closest


def run_windows(
    patched, base, family: str, height: int, width: int, steps: int, expected_grid=None, **kwargs
) -> list[WindowCall]:
    with transformer_inputs(base) as views:
        checked, calls = checking_windows(patched, views, expected_grid)
        sample(checked, family, height, width, steps=steps, **kwargs)
    return calls


def shifts_by_step(calls: list[WindowCall], sigmas: list[float]) -> dict[tuple, list[str]]:
    """{block: [matched layout of each step]}."""
    found: dict[tuple, dict[int, str]] = {}
    for call in calls:
        found.setdefault(call.block, {})[step_of(sigmas, call.sigma)] = call.match
    return {block: [steps[i] for i in sorted(steps)] for block, steps in found.items()}


WINDOWED = {"sd15": PRESET_BLOCKS["sd15"], "sdxl": ("4,5,7,8", "0,1,2,3,4,5")}
"""The preset blocks; on SDXL also level 2, the only level of the tiny SDXL with more than
one head (SDXL's heads are 64 channels wide)."""


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
@pytest.mark.parametrize("shift_mode", ["distinct", "independent", "none"])
def test_every_window_call_is_the_naive_reference_at_one_shift(pack, family, shift_mode):
    """Odd, non-square latent (29x45), batch 2 with CFG (cond and uncond in one call): each
    call equals naive windowed attention at exactly one shift, by the model's own heads."""
    base = sharp_attention_model(family)
    inputs = dict(zip(("input_blocks", "output_blocks"), WINDOWED[family]))
    patched = apply_msw(pack, base, inputs, yaml_parameters=f"shift_mode: {shift_mode}")
    steps = 6
    calls = run_windows(patched, base, family, 29, 45, steps, batch=2, seed=4)
    assert_exact_and_decisive(calls)
    assert {c.batch for c in calls} == {4}, "cond and uncond of both images share one call"
    assert {c.grid for c in calls} == ({(29, 45)} if family == "sd15" else {(15, 23), (8, 12)})
    assert max(c.heads for c in calls) > 1, "a wrong head split would not show"
    per_block = shifts_by_step(calls, step_sigmas(base, steps))
    assert len(per_block) == (5 if family == "sd15" else 15)
    assert all(len(shifts) == steps for shifts in per_block.values())
    used = {c.match for c in calls}
    if shift_mode == "none":
        assert used == {"shift 0"}
    else:
        assert used == {f"shift {i}" for i in range(4)}
    if shift_mode == "distinct":
        assert all(a != b for shifts in per_block.values() for a, b in zip(shifts, shifts[1:]))


def test_outside_the_time_range_a_call_is_whole_grid_attention(pack):
    base = sharp_attention_model("sd15")
    patched = apply_msw(pack, base, start_time=0.3, end_time=0.7)
    steps = 8
    calls = run_windows(patched, base, "sd15", 21, 27, steps)
    assert_exact_and_decisive(calls)
    low, high = percent_sigma(base, 0.7), percent_sigma(base, 0.3)
    for call in calls:
        assert (call.match != "whole grid") == (low <= call.sigma <= high), call
    assert {c.match == "whole grid" for c in calls} == {True, False}


def test_under_raunet_windows_follow_the_shrunk_maps(pack):
    """MSW-MSA on level 0 and level 1 under RAU-Net (RAD 3/8, CA 4/8): while RAU-Net is
    active the level-1 maps are a quarter (input 4) and an eighth (input 5 onwards) of the
    latent; each call is windowed on the map it really gets."""
    base = sharp_attention_model("sd15")
    patched = apply_msw(pack, raunet(pack, base), input_blocks="1,2,4,5", output_blocks="6,7,8,9,10,11")
    calls = run_windows(patched, base, "sd15", 29, 45, 5)
    assert_exact_and_decisive(calls)
    grids = {}
    for call in calls:
        grids.setdefault(call.block[:2], set()).add(call.grid)
    assert grids[("input", 4)] == {(8, 12), (15, 23)}  # RAD active, then stock
    assert grids[("input", 5)] == {(4, 6), (8, 12), (15, 23)}  # RAD and CA, RAD alone, stock
    assert grids[("input", 1)] == {(29, 45)}


@pytest.mark.parametrize(
    ("family", "yaml", "expected"),
    [
        ("sd15", "window_grid: 3x4", {(29, 45): (3, 4)}),
        # native 128 px: a 16-token grid at level 0, 8 at level 1, 4 at level 2
        ("sd15", "window_grid: native\nnative_resolution: 128", {(29, 45): (2, 3)}),
        ("sdxl", "window_grid: native\nnative_resolution: 128", {(15, 23): (2, 3), (8, 12): (2, 3)}),
        ("sdxl", "window_grid: native\nnative_resolution: 64", {(15, 23): (4, 6), (8, 12): (4, 6)}),
    ],
)
def test_other_window_grids_are_the_naive_reference_of_that_grid(pack, family, yaml, expected):
    """``window_grid`` RxC and native: each call equals naive windowed attention on the grid
    of windows the test expects for its token grid, and is far from the official 2x2."""
    base = sharp_attention_model(family)
    inputs = dict(zip(("input_blocks", "output_blocks"), WINDOWED[family]))
    patched = apply_msw(pack, base, inputs, yaml_parameters=yaml)
    calls = run_windows(patched, base, family, 29, 45, 3, expected_grid=lambda h, w: expected[(h, w)], seed=4)
    assert_exact_and_decisive(calls)
    for call in calls:
        rows, cols = expected[call.grid]
        assert call.match.startswith(f"{rows}x{cols} shift "), call
    assert {c.grid for c in calls} == set(expected)


# --- CA downscale and restore -----------------------------------------------------------


def pooled_reference(h: torch.Tensor, factor: int) -> torch.Tensor:
    """The official CA pooling written out: the mean of each factor x factor cell, border
    cells averaging only the pixels they cover."""
    height, width = h.shape[-2:]
    rows, cols = math.ceil(height / factor), math.ceil(width / factor)
    out = torch.empty(*h.shape[:-2], rows, cols, dtype=h.dtype)
    for r in range(rows):
        for c in range(cols):
            cell = h[..., r * factor : (r + 1) * factor, c * factor : (c + 1) * factor]
            out[..., r, c] = cell.mean(dim=(-2, -1))
    return out


@dataclass
class CaCall:
    kind: str
    block: int
    sigma: float
    before: tuple[int, int]
    after: tuple[int, int]
    skip: tuple[int, int] | None
    error: float
    margin: float


def checking_ca(patched) -> tuple[object, list[CaCall]]:
    calls: list[CaCall] = []
    clone = patched.clone()

    def wrap_downscale(patch):
        def check(h, transformer_options):
            out = patch(h, transformer_options)
            block = transformer_options["block"][1]
            if out is h:
                error, margin = 0.0, math.inf
            else:
                ref = pooled_reference(h, int(patch.factors[0]))
                error = (out - ref).abs().max().item()
                margin = (ref - F.interpolate(h, size=ref.shape[-2:], mode="nearest")).abs().max().item()
            calls.append(
                CaCall(
                    "input",
                    block,
                    sigma_of(transformer_options),
                    tuple(h.shape[-2:]),
                    tuple(out.shape[-2:]),
                    None,
                    error,
                    margin,
                )
            )
            return out

        return check

    def wrap_restore(patch):
        def check(h, hsp, transformer_options):
            out, hsp_out = patch(h, hsp, transformer_options)
            assert hsp_out is hsp
            block = transformer_options["block"][1]
            if out is h:
                error, margin = 0.0, math.inf
            else:
                size = hsp.shape[-2:]
                ref = F.interpolate(h, size=size, mode="bicubic")
                error = (out - ref).abs().max().item()
                margin = (ref - F.interpolate(h, size=size, mode="nearest")).abs().max().item()
            calls.append(
                CaCall(
                    "output",
                    block,
                    sigma_of(transformer_options),
                    tuple(h.shape[-2:]),
                    tuple(out.shape[-2:]),
                    tuple(hsp.shape[-2:]),
                    error,
                    margin,
                )
            )
            return out, hsp_out

        return check

    assert replace_own(clone, "input_block_patch", "CaDownscale", wrap_downscale) == 1
    assert replace_own(clone, "output_block_patch", "CaRestore", wrap_restore) == 1
    return clone, calls


@pytest.mark.parametrize(("family", "pair", "factor"), [("sd15", (4, 8), 2), ("sd15", (1, 11), 3), ("sdxl", (4, 5), 2)])
def test_each_ca_downscale_and_restore_is_the_reference_at_its_block(pack, family, pair, factor):
    """CA only (RAD off): while active, the paired input block's output is pooled by the
    factor and the paired output block's map comes back to its skip's exact size, which is
    the size the input block's map had before pooling; outside the range both leave the
    map alone."""
    base = sharp_attention_model(family)
    ca_in, ca_out = pair
    patched = raunet(
        pack,
        base,
        input_blocks="",
        output_blocks="",
        ca_input_blocks=str(ca_in),
        ca_output_blocks=str(ca_out),
        ca_downscale_factor=float(factor),
        ca_end_time=0.5,
    )
    checked, calls = checking_ca(patched)
    sample(checked, family, 29, 45, steps=6)
    assert_exact_and_decisive([c for c in calls if c.margin != math.inf])
    bound = percent_sigma(base, 0.5)
    pooled = [c for c in calls if c.kind == "input" and c.before != c.after]
    restored = [c for c in calls if c.kind == "output" and c.before != c.after]
    assert pooled and {c.block for c in pooled} == {ca_in}
    assert restored and {c.block for c in restored} == {ca_out}
    for call in calls:
        changed = call.before != call.after
        at_pair = call.block == (ca_in if call.kind == "input" else ca_out)
        assert changed == (at_pair and call.sigma >= bound), call
    assert len(pooled) == len(restored)
    for down, up in zip(pooled, restored):
        assert down.sigma == up.sigma
        assert down.after == tuple(math.ceil(s / factor) for s in down.before)
        assert up.before == down.after and up.skip == up.after == down.before


# --- ControlNet residuals -----------------------------------------------------------------


@dataclass
class UNetCall:
    """One UNet call as the recorder saw it: its residuals (in the order ComfyUI pops them),
    every skip pushed, the middle block's output."""

    sigma: float
    residuals: dict[str, list]
    skips: dict[int, torch.Tensor] = field(default_factory=dict)
    middle: torch.Tensor | None = None


@dataclass(frozen=True)
class ResidualCheck:
    kind: str
    block: int
    active: bool
    residual_size: tuple[int, int]
    nominal_size: tuple[int, int]
    map_size: tuple[int, int]
    incoming_error: float
    error: float
    margin: float


class ControlRecorder:
    """Wraps the bridge of a patched clone: each residual is checked at its block."""

    def __init__(self, patched, active) -> None:
        from comfy.patcher_extension import WrappersMP

        self.controlnet = pack_module("hidiff.comfyui.controlnet")
        self.active = active
        self.calls: list[UNetCall] = []
        self.checks: list[ResidualCheck] = []
        self.nominal: dict[tuple[str, int], tuple[int, int]] = {}
        self.model = patched.clone()
        wrappers = self.model.wrappers[WrappersMP.DIFFUSION_MODEL][self.controlnet.EFFECT]
        assert len(wrappers) == 1
        wrappers[0] = self.wrap_call(wrappers[0])
        patch_list(self.model, "input_block_patch").append(self.record_skip)
        assert replace_own(self.model, "input_block_patch", "ControlInputPatch", self.wrap_input) == 1
        assert replace_own(self.model, "output_block_patch", "ControlOutputPatch", self.wrap_output) == 1

    def wrap_call(self, wrapper):
        def call(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
            lists = {name: list(values) for name, values in (control or {}).items() if isinstance(values, list)}
            self.calls.append(UNetCall(sigma_of(transformer_options), lists))
            return wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs)

        return call

    def record_skip(self, h, transformer_options):
        self.calls[-1].skips[transformer_options["block"][1]] = h.clone()
        return h

    def check(self, kind, block, active, start, out, candidates, adds=None, incoming_error=0.0):
        """Pop this block's residual (as apply_control would) and record how far ``out`` is
        from ``start`` plus that residual fitted to the map (or from ``start`` alone when
        ``adds`` is false: stock ComfyUI added it already). ``candidates``: the call's other
        residuals, which a misplaced residual would have added instead."""
        residual = self.calls[-1].residuals[kind].pop()
        if residual is None:
            return
        adds = active if adds is None else adds

        def added(r):
            if r.shape[-2:] != start.shape[-2:]:
                r = F.interpolate(r, size=start.shape[-2:], mode="bicubic")
            return start + r

        expected = added(residual) if adds else start
        wrong = [start] + [added(r) for r in candidates if r is not None and r.shape[1] == start.shape[1]]
        self.checks.append(
            ResidualCheck(
                kind,
                block,
                active,
                tuple(residual.shape[-2:]),
                self.nominal.get((kind, block), (0, 0)),
                tuple(start.shape[-2:]),
                incoming_error,
                (out - expected).abs().max().item(),
                min((expected - w).abs().max().item() for w in wrong) if adds else math.inf,
            )
        )

    def wrap_input(self, patch):
        def call(h, transformer_options):
            out = patch(h, transformer_options)
            if self.calls[-1].residuals.get("input"):
                active = self.active(sigma_of(transformer_options))
                block = transformer_options["block"][1]
                self.check("input", block, active, h, out, self.calls[-1].residuals["input"])
            return out

        return call

    def wrap_output(self, patch):
        def call(h, hsp, transformer_options):
            unet_call = self.calls[-1]
            block = transformer_options["block"][1]
            active = self.active(sigma_of(transformer_options))
            h_out, hsp_out = patch(h, hsp, transformer_options)
            skip = unet_call.skips[len(unet_call.skips) - 1 - block]
            residuals = unet_call.residuals.get("output", [])
            if residuals:
                if active:
                    # the UNet's own apply_control added nothing: the bridge blanked its lists
                    incoming = (hsp - skip).abs().max().item()
                    self.check("output", block, True, skip, hsp_out, residuals, incoming_error=incoming)
                else:
                    # stock ComfyUI added it (equal sizes); the bridge leaves the skip alone
                    stock = skip if residuals[-1] is None else skip + residuals[-1]
                    incoming = (hsp - stock).abs().max().item()
                    self.check("output", block, False, hsp, hsp_out, residuals, incoming_error=incoming)
            if block == 0 and unet_call.residuals.get("middle"):
                # added by the bridge while active, by ComfyUI otherwise: either way it is there
                self.check("middle", 0, active, unet_call.middle, h_out, [], adds=True)
            return h_out, hsp_out

        return call

    @contextmanager
    def middle_outputs(self, base) -> Iterator[None]:
        unet = base.get_model_object("diffusion_model")

        def hook(module, args, output):
            self.calls[-1].middle = output.clone()

        # ComfyUI calls the middle block's layers one by one, so the hook sits on the last
        handle = unet.middle_block[-1].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def nominal_sizes(base, family, height, width, control) -> dict[tuple[str, int], tuple[int, int]]:
    """Where each residual belongs: the map sizes of an unpatched run, by the block whose
    apply_control adds it (input blocks: their output; output blocks: their skip)."""
    sizes: dict[tuple[str, int], tuple[int, int]] = {}
    clone = base.clone()

    def on_input(h, options):
        sizes[("input", options["block"][1])] = tuple(h.shape[-2:])
        return h

    def on_output(h, hsp, options):
        sizes[("output", options["block"][1])] = tuple(hsp.shape[-2:])
        sizes.setdefault(("middle", 0), tuple(h.shape[-2:]))
        return h, hsp

    clone.set_model_input_block_patch(on_input)
    clone.set_model_output_block_patch(on_output)
    sample(clone, family, height, width, steps=1, control=control)
    return sizes


def tiny_control_lora(family: str):
    """A ComfyUI ControlLora for the tiny layout: the ControlNet's own layers (hint block,
    zero convs) plus low-rank deltas on two linear layers; the rest comes from the UNet."""
    import comfy.controlnet

    full = tiny_controlnet(family).control_model.state_dict()
    own = ("input_hint_block.", "zero_convs.", "middle_block_out.")
    weights = {k: v for k, v in full.items() if k.startswith(own)}
    generator = torch.Generator().manual_seed(8)
    for layer in ("input_blocks.4.1.proj_in", "middle_block.1.proj_out"):
        width = full[f"{layer}.weight"].shape[0]
        weights[f"{layer}.up"] = torch.randn(width, 4, generator=generator) * 0.05
        weights[f"{layer}.down"] = torch.randn(4, full[f"{layer}.weight"].shape[1], generator=generator) * 0.05
    weights["lora_controlnet"] = torch.tensor([])
    return comfy.controlnet.ControlLora(weights)


CONTROLS = {
    "controlnet": lambda family, h, w: (
        tiny_controlnet(family).copy().set_cond_hint(control_hint(h, w), 1.0, (0.0, 1.0))
    ),
    "control-lora": lambda family, h, w: (
        tiny_control_lora(family).copy().set_cond_hint(control_hint(h, w), 1.0, (0.0, 1.0))
    ),
    "t2i-adapter": lambda family, h, w: tiny_t2i_adapter(h, w),
}


@pytest.mark.parametrize(
    ("family", "kind"),
    [("sd15", "controlnet"), ("sdxl", "controlnet"), ("sdxl", "control-lora"), ("sd15", "t2i-adapter")],
)
def test_each_residual_is_added_at_its_block_fitted_to_the_map(pack, family, kind):
    """Under RAU-Net (RAD and CA, active to 60 %): every residual of every call is added
    once, to the map of the block it was made for, resized to that map when RAU-Net
    changed it; when RAU-Net is inactive, ComfyUI adds it itself and the bridge adds
    nothing."""
    base = sharp_attention_model(family)
    height, width = 24, 40
    control = CONTROLS[kind](family, height, width)
    patched = raunet(pack, base)
    bound = percent_sigma(base, RAUNET_SD15["end_time"])
    recorder = ControlRecorder(patched, active=lambda sigma: sigma >= bound)
    recorder.nominal = nominal_sizes(base, family, height, width, control)
    with recorder.middle_outputs(base):
        sample(recorder.model, family, height, width, steps=4, control=control)
    checks = recorder.checks
    assert checks
    for check in checks:
        assert check.incoming_error == 0.0, check
        assert check.error <= TOL, check
        assert check.residual_size == check.nominal_size, check
    active = [c for c in checks if c.active]
    assert min(c.margin for c in active) >= MARGIN
    assert any(c.residual_size != c.map_size for c in active), "RAU-Net changed no map the residuals meet"
    assert {c.active for c in checks} == {True, False}
    kinds = {c.kind for c in checks}
    assert kinds == ({"input"} if kind == "t2i-adapter" else {"output", "middle"})
    # every residual was taken: nothing is left in any call's lists
    assert all(not any(r is not None for r in lst) for call in recorder.calls for lst in call.residuals.values())
