"""What changed in ComfyUI between 0.3.64 and 0.33.0, checked on whichever version runs.

Each test holds on every supported version; where a test needs something only newer
versions have (SUPIR, ``middle_block_after_patch``), it is a feature-gated skip that the
tier summary names.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.model_patcher
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from comfy.patcher_extension import WrappersMP
from harness import (
    control_hint,
    fresh_model,
    needs_feature,
    pack_module,
    rau_patches,
    sample,
    tiny_controlnet,
    tiny_model,
)
from node_settings import RAUNET_SD15

RAD_BICUBIC = dict(RAUNET_SD15, ca_start_time=1.0, ca_end_time=1.0, ca_input_blocks="", ca_output_blocks="")
WITH_CA = dict(RAUNET_SD15)  # RAD 3/8 to 60 %, CA 4/8 to 40 %


def raunet(pack, model, **overrides):
    return pack["ApplyRAUNet"].execute(model=model, **{**RAD_BICUBIC, **overrides}).result[0]


def has_supir() -> bool:
    try:
        import comfy.ldm.supir.supir_patch  # noqa: F401
    except ImportError:
        return False
    return True


def has_middle_block_patch() -> bool:
    return hasattr(comfy.model_patcher.ModelPatcher, "set_model_middle_block_after_patch")


# --- FreeU V2 -------------------------------------------------------------------------------------


def freeu_v2_copy(model):
    """FreeU V2's output block patch as another pack would copy it: other names, same maths."""

    def normalised_boost(h, hsp, transformer_options):
        if h.shape[1] == 128:  # the tiny SD1.5 layout's middle block width (model_channels * 4)
            mean = h.mean(1, keepdim=True)
            flat = mean.flatten(1)
            low, high = flat.min(-1).values[:, None, None, None], flat.max(-1).values[:, None, None, None]
            h = h * (1 + 0.3 * (mean - low) / (high - low))
        return h, hsp

    patched = model.clone()
    patched.set_model_output_block_patch(normalised_boost)
    return patched


def test_core_freeu_v2_is_found_by_what_it_does(pack):
    """Core FreeU V2 (a V1 method on 0.3.64, a V3 node since) on a 1x1 middle block."""
    from comfy_extras.nodes_freelunch import FreeU_V2

    model = raunet(pack, FreeU_V2().patch(tiny_model("sd15"), 1.3, 1.4, 0.9, 0.2)[0], **{**WITH_CA, "end_time": 0.7})
    with pytest.raises(ValueError, match=r"FreeU_V2 \(comfy_extras\S*\) turns a 1x1 map into NaN"):
        sample(model, "sd15", 21, 29, steps=2)


def test_a_copy_of_freeu_v2_from_another_pack_is_found_too(pack):
    model = raunet(pack, freeu_v2_copy(tiny_model("sd15")), **{**WITH_CA, "end_time": 0.7})
    with pytest.raises(ValueError, match="and freeu_v2_copy .* turns a 1x1 map into NaN"):
        sample(model, "sd15", 21, 29, steps=2)
    # the same patch on a 2x2 middle block is fine, and is left to run
    assert torch.isfinite(sample(model, "sd15", 37, 53, steps=2)).all()


# --- RAU without a layer held ---------------------------------------------------------------------


def test_rau_takes_the_route_this_comfyui_offers(pack):
    rn = pack_module("hidiff.comfyui.raunet")
    patched = raunet(pack, tiny_model("sd15"))
    (rau,) = rau_patches(patched)
    if rn.upsample_handlers_supported():
        assert type(rau).__name__ == "ResolutionAwareUpsample" and not patched.object_patches
    else:
        assert type(rau).__name__ == "UpsampleForward"
        assert not [value for value in vars(rau).values() if isinstance(value, torch.nn.Module)]  # no layer held


def twin_of(patched, module_owner):
    """A patcher over another module tree that carries ``patched``'s patches, as ComfyUI builds
    multi-GPU clones and the dynamic-VRAM delegate: with ComfyUI's own ``clone(model_override=...)``
    where it has one (0.33.0), else by copying what ``clone`` copies onto a new patcher."""
    import copy
    import inspect

    if "model_override" in inspect.signature(patched.clone).parameters:
        return patched.clone(model_override=(module_owner.model, ({}, {}, {}, set())))
    twin = comfy.model_patcher.ModelPatcher(
        module_owner.model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    twin.object_patches = dict(patched.object_patches)
    for name in ("model_options", "wrappers", "callbacks", "attachments", "additional_models", "injections"):
        setattr(twin, name, copy.deepcopy(getattr(patched, name)))
    return twin


@pytest.mark.parametrize("mode", ["bicubic", "bislerp"])
def test_a_patcher_with_copied_object_patches_uses_its_own_weights(pack, mode):
    """RAU's resample runs the Upsample's own conv: a twin over other weights must use the twin's."""
    first = tiny_model("sd15")
    other = fresh_model("sd15", weight_seed=777)
    patched = raunet(pack, first, upscale_mode=mode)
    twin = twin_of(patched, other)
    expected = sample(raunet(pack, other, upscale_mode=mode), "sd15", 37, 53, steps=2)
    result = sample(twin, "sd15", 37, 53, steps=2)
    assert torch.equal(result, expected)
    assert (result - sample(patched, "sd15", 37, 53, steps=2)).abs().max() > 1e-2  # the weights matter
    assert (result - sample(other, "sd15", 37, 53, steps=2)).abs().max() > 1e-2  # and so does RAU-Net


# --- hsp=None from another node and SUPIR ----------------------------------------------------------


def merge_skip(h, hsp, transformer_options):
    """An output block patch that merges the skip itself and hands on ``hsp=None``, as SUPIR does
    (here with the same concatenation the UNet would make, so the result must not change)."""
    if hsp is None:
        return h, hsp
    return torch.cat([h, hsp], dim=1), None


@needs_feature("output block patches that hand on hsp=None (with SUPIR, v0.20.0 and newer)", has_supir())
@pytest.mark.parametrize("controlnet", [False, True], ids=["plain", "controlnet"])
def test_an_earlier_patch_that_hands_on_no_skip_changes_nothing(pack, controlnet):
    control = (
        tiny_controlnet("sd15").copy().set_cond_hint(control_hint(37, 53), 1.0, (0.0, 1.0)) if controlnet else None
    )
    base = tiny_model("sd15")
    merging = base.clone()
    merging.set_model_output_block_patch(merge_skip)
    result = sample(raunet(pack, merging), "sd15", 37, 53, steps=2, control=control)
    reference = sample(raunet(pack, base), "sd15", 37, 53, steps=2, control=control)
    assert torch.equal(result, reference)
    if controlnet:
        assert (reference - sample(raunet(pack, base), "sd15", 37, 53, steps=2)).abs().max() > 1e-2


def test_the_restore_and_the_bridge_hand_on_a_missing_skip(pack):
    rn = pack_module("hidiff.comfyui.raunet")
    cn = pack_module("hidiff.comfyui.controlnet")
    h = torch.randn(1, 8, 3, 5)
    assert rn.CaRestore([8], "bicubic", False)(h, None, {"block": ("output", 8)}) == (h, None)
    residual = torch.ones(1, 8, 6, 10)
    stash = cn.ControlStash({"output": [residual], "middle": []}, lambda x, height, width: x)
    out = cn.ControlOutputPatch(middle=False)(h, None, {"block": ("output", 3), cn.STASH_KEY: stash})
    assert out[0] is h and out[1] is None and stash.lists["output"] == []  # popped, so the order holds


def supir_on(model):
    """Core SUPIR's patches on a clone, registered the way its node does (no weights needed)."""
    from comfy.ldm.supir.supir_patch import SUPIRPatch

    patched = model.clone()
    SUPIRPatch(None, [], None, 1.0, 1.0).register(patched)
    return patched


@needs_feature("SUPIR (comfy.ldm.supir, v0.20.0 and newer)", has_supir())
def test_supir_is_refused_when_raunet_is_applied(pack):
    with pytest.raises(ValueError, match="RAU-Net cannot be used with SUPIR"):
        raunet(pack, supir_on(tiny_model("sdxl")), input_blocks="3", output_blocks="5")


@needs_feature("SUPIR (comfy.ldm.supir, v0.20.0 and newer)", has_supir())
def test_supir_added_after_raunet_is_refused_before_the_first_step(pack):
    model = supir_on(raunet(pack, tiny_model("sdxl"), input_blocks="3", output_blocks="5"))
    with pytest.raises(ValueError, match="RAU-Net cannot be used with SUPIR"):
        sample(model, "sdxl", 29, 45, steps=2)


def sdpose_model():
    """A tiny SD1.5-layout UNet with a pose heatmap head, as SDPose-OOD loads (v0.16.0 and newer);
    on older ComfyUI the head is attached by hand, which is all the refusal looks at."""
    import inspect

    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    if "heatmap_head" in inspect.signature(UNetModel.__init__).parameters:
        return fresh_model("sd15", heatmap_head=True)
    model = fresh_model("sd15")
    model.model.diffusion_model.heatmap_head = torch.nn.Conv2d(32, 17, 1)
    return model


@pytest.mark.parametrize("node", ["ApplyRAUNet", "ApplyMSWMSAAttention", "ApplyHiDiffusion"])
def test_a_pose_estimation_unet_is_refused_as_not_a_generation_unet(pack, node):
    model = sdpose_model()
    with pytest.raises(ValueError, match="heatmap head .* is not a generation UNet"):
        if node == "ApplyRAUNet":
            raunet(pack, model)
        elif node == "ApplyMSWMSAAttention":
            pack[node].execute(
                model=model,
                input_blocks="1,2",
                middle_blocks="",
                output_blocks="9,10,11",
                time_mode="percent",
                start_time=0.0,
                end_time=1.0,
            )
        else:
            pack[node].execute(model=model, width=2048, height=2048, raunet=True, msw_msa=True)


# --- the ControlNet middle residual ---------------------------------------------------------------


def recording_middle(model):
    """A clone whose ``middle_block_after_patch`` records the ``h`` it gets, and whose outermost
    DIFFUSION_MODEL wrapper records the middle residual ComfyUI hands the UNet."""
    seen: dict[str, list] = {"h": [], "residual": []}

    def middle_patch(args):
        seen["h"].append(args["h"].clone())
        return args

    def wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        seen["residual"].append(None if not control else control["middle"][0].clone())
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    clone = model.clone()
    clone.set_model_middle_block_after_patch(middle_patch)
    clone.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_record_middle", wrapper)
    return clone, seen


@needs_feature("middle_block_after_patch (v0.20.0 and newer)", has_middle_block_patch())
def test_the_middle_residual_is_added_before_middle_block_after_patch_runs(pack, logs):
    """Stock ComfyUI adds the middle residual right after the middle block, before any
    middle_block_after_patch; while RAU-Net shrinks the middle block the bridge must do the same.
    The patch sees h + resize(residual) (the residual written here as a bicubic resize)."""
    recorded, seen = recording_middle(tiny_model("sd15"))
    model = raunet(pack, recorded)
    control = tiny_controlnet("sd15").copy().set_cond_hint(control_hint(37, 53), 1.0, (0.0, 1.0))
    sample(model, "sd15", 37, 53, steps=1, cfg=1.0, control=control)
    with_residual, residual = seen["h"][0], seen["residual"][0]
    seen["h"].clear()
    sample(model, "sd15", 37, 53, steps=1, cfg=1.0)
    without = seen["h"][0]
    assert residual.shape[-2:] == (5, 7) and with_residual.shape[-2:] == (3, 4)  # RAD shrank the middle block
    expected = F.interpolate(residual, size=(3, 4), mode="bicubic")
    torch.testing.assert_close(with_residual - without, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 1e-3  # far above the tolerance: a missing residual fails
    assert not [m for m in logs.messages(logging.WARNING) if "control could not be applied" in m]


# --- V3 schema extras -----------------------------------------------------------------------------


def test_nodes_sit_next_to_core_deep_shrink(pack):
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    category = PatchModelAddDownscale.define_schema().category
    for node in ("ApplyHiDiffusion", "HiDiffusionInspect", "ApplyRAUNet", "ApplyRAUNetSimple"):
        assert pack[node].GET_NODE_INFO_V1()["category"] == category


def test_every_node_is_declared_on_the_pack_base(pack):
    """The seven nodes declare themselves by class members and one base writes every schema:
    its id, display name, output and inputs come from those members, on whatever ComfyUI runs."""
    node_common = pack_module("hidiff.comfyui.node_common")
    ours = {name: node for name, node in pack.items() if "hidiff" in node.__module__}
    assert len(ours) == 7
    for name, node in ours.items():
        assert issubclass(node, node_common.PackNode) and "define_schema" not in vars(node), name
        schema = node.GET_SCHEMA()
        assert (schema.node_id, schema.display_name, schema.is_output_node) == (
            name,
            node.display_name,
            node.is_output_node,
        )
        assert [item.id for item in schema.inputs] == [item.id for item in node.node_inputs()]
        assert [output.io_type for output in schema.outputs] == [output.io_type for output in node.node_outputs()]
    assert list(ours["HiDiffusionInspect"].RETURN_TYPES) == ["STRING"] and ours["HiDiffusionInspect"].OUTPUT_NODE


def schema_has(field: str) -> bool:
    import dataclasses

    from comfy_api.latest import io

    return field in {f.name for f in dataclasses.fields(io.Schema)}


@needs_feature("search_aliases (v0.11.0 and newer)", schema_has("search_aliases"))
def test_the_node_search_finds_the_nodes_by_their_aliases(pack):
    assert "hidiffusion" in pack["ApplyHiDiffusion"].GET_NODE_INFO_V1()["search_aliases"]
    assert "rau-net" in pack["ApplyRAUNet"].GET_NODE_INFO_V1()["search_aliases"]
    assert "msw-msa" in pack["ApplyMSWMSAAttention"].GET_NODE_INFO_V1()["search_aliases"]


def input_has_advanced() -> bool:
    import inspect

    from comfy_api.latest import io

    return "advanced" in inspect.signature(io.String.Input.__init__).parameters


@needs_feature("advanced inputs (v0.10.0 and newer)", input_has_advanced())
def test_ca_two_stage_and_yaml_inputs_are_advanced(pack):
    info = pack["ApplyRAUNet"].GET_NODE_INFO_V1()["input"]
    specs = {**info["required"], **info.get("optional", {})}
    advanced = {name for name, spec in specs.items() if len(spec) > 1 and spec[1].get("advanced")}
    assert advanced == {name for name in specs if name.startswith(("ca_", "two_stage", "yaml"))}
    assert "input_blocks" not in advanced
