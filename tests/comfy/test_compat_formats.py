"""Compatibility with weight and model formats: LoRA, manual cast (bf16, fp8), a quantised
Downsample, and model kinds (EDM, inpainting, refiner).

See compat_common for what every test checks and how the table is made from them.
"""

from __future__ import annotations

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sample
import comfy.samplers
import comfy.supported_models
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from compat_common import (
    FORMATS,
    RAD_ONLY,
    attn1_replaces,
    check_run,
    compat,
    different,
    hidiffusion,
    msw,
    raunet,
)
from harness import (
    CONFIGS,
    assert_matches_a_decisive_reference,
    fresh_model,
    pack_module,
    sample,
    sharp_attention_model,
    tiny_model,
)
from reference import naive_windowed

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
