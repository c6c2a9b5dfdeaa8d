"""Real ComfyUI in the test process: locating it, loading the pack, tiny models, sampling.

ComfyUI is found at ``$COMFYUI_PATH``, else ``~/comfy/ComfyUI``. The pack is loaded with
ComfyUI's own custom-node loader and its nodes are taken from ComfyUI's node registry.
Models are tiny random UNets built by ComfyUI's own model classes with the real SD1.5
and SDXL block layouts, and sampling goes through ``comfy.sample``, so
transformer_options, sample_sigmas, wrappers and CFG batching are all real.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Shared with the benchmark, so both see ComfyUI and the pack the same way.
from hidiff.bench.comfy_env import comfyui_available, comfyui_path, comfyui_version, load_pack, placed_values  # noqa: E402, F401

FEATURE_SKIP = "needs a ComfyUI feature this version lacks:"
"""Start of the reason of a skip that is allowed in CI: the running ComfyUI lacks what the test checks."""


def needs_feature(feature: str, present: bool):
    """Mark a test that only means something where the running ComfyUI has ``feature``."""
    import pytest

    return pytest.mark.skipif(not present, reason=f"{FEATURE_SKIP} {feature}")


def pinned_frontend_version() -> str | None:
    """The comfyui-frontend-package version the running ComfyUI's requirements.txt pins."""
    import re

    requirements = comfyui_path() / "requirements.txt"
    if not requirements.is_file():
        return None
    match = re.search(r"^comfyui-frontend-package==([0-9.]+)", requirements.read_text(), re.MULTILINE)
    return match.group(1) if match else None


THIRD_PARTY = Path(os.environ.get("HIDIFF_THIRD_PARTY", Path.home() / "comfy" / "third_party"))
"""Where scripts/setup.sh lays out the third-party packs the compatibility tests run with."""


def third_party_pack(name: str) -> Path:
    """The folder of a third-party pack set up by scripts/setup.sh; the test is skipped
    (which fails CI) when setup could not lay it out."""
    import pytest

    path = THIRD_PARTY / name
    if not (path / "__init__.py").is_file():
        pytest.skip(f"third-party pack {name} is not at {path}: run scripts/setup.sh (it needs a snapshot)")
    return path


def bleh_folder() -> str:
    """The ComfyUI-bleh that runs on this ComfyUI: its newest commit needs a ComfyUI newer than
    0.3.64 (``comfy.latent_formats.HunyuanVideo15``), so 0.3.64 gets the last one of 2025-09."""
    version = tuple(int(part) for part in (comfyui_version() or "0").split(".")[:3] if part.isdigit())
    return "ComfyUI-bleh-2025.09" if version <= (0, 3, 64) else "ComfyUI-bleh"


_LOADED_THIRD_PARTY: set[str] = set()


def load_third_party(name: str) -> dict:
    """Load a third-party pack (once) with ComfyUI's custom-node loader, as ComfyUI does at
    start-up; return ComfyUI's node registry."""
    import asyncio

    import nodes

    path = third_party_pack(name)
    if name not in _LOADED_THIRD_PARTY:
        if not asyncio.run(nodes.load_custom_node(str(path), ignore=set(), module_parent="custom_nodes")):
            raise RuntimeError(f"ComfyUI could not load {name}; see the log above")
        _LOADED_THIRD_PARTY.add(name)
    return nodes.NODE_CLASS_MAPPINGS


def import_comfyui() -> None:
    """Put ComfyUI on sys.path and import it in CPU mode (tests never use a GPU)."""
    from hidiff.bench.comfy_env import import_comfyui as import_it

    import_it(cpu=True)


def pack_module(name: str):
    """A pack module under the name ComfyUI's loader gave the pack (imported if needed),
    e.g. ``pack_module("hidiff.comfyui.msw_msa")``."""
    import importlib

    load_pack()
    return importlib.import_module(f"{str(REPO_ROOT).replace('.', '_x_')}.{name}")


SD15_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 64,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SDXL_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 32,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 1, 1],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": 64,
    "num_head_channels": 16,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 1, 1, 1],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SD2V_CONFIG = dict(SD15_CONFIG, use_linear_in_transformer=True, context_dim=1024, num_heads=-1, num_head_channels=16)
"""SD2.x-768-v: the SD layout with linear projections, 1024-wide text context, v-prediction."""

SDXL_SMALL_CONFIG = dict(
    SDXL_CONFIG, num_res_blocks=[1, 1, 1], transformer_depth=[0, 1, 1], transformer_depth_output=[0, 0, 1, 1, 1, 1]
)
"""An SDXL-like layout with fewer blocks (KOALA-style: one res block per level)."""

SDXL_REFINER_CONFIG = dict(
    SDXL_CONFIG,
    adm_in_channels=2560,
    num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 2, 4, 4],
    transformer_depth=[0, 0, 1, 1, 1, 1, 0, 0],
    transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
)
"""The SDXL refiner's layout: four levels like SD1.x, attention on the middle two only."""

CONFIGS = {
    "sd15": SD15_CONFIG,
    "sdxl": SDXL_CONFIG,
    "sd2v": SD2V_CONFIG,
    "sdxl_small": SDXL_SMALL_CONFIG,
    "sdxl_inpaint": dict(SDXL_CONFIG, in_channels=9),
    "sdxl_refiner": SDXL_REFINER_CONFIG,
    "sdxl_playground": SDXL_CONFIG,
    "sdxl_vpred_edm": SDXL_CONFIG,
}
FAMILY_OF = {
    "sd15": "sd15",
    "sdxl": "sdxl",
    "sd2v": "sd15",
    "sdxl_small": "sdxl",
    "sdxl_inpaint": "sdxl",
    "sdxl_refiner": "sdxl",
    "sdxl_playground": "sdxl",
    "sdxl_vpred_edm": "sdxl",
}
CHECKPOINT_MARKERS = {
    "sdxl_playground": {"edm_mean": torch.zeros(1, 4, 1, 1), "edm_std": torch.ones(1, 4, 1, 1)},
    "sdxl_vpred_edm": {"edm_vpred.sigma_max": torch.tensor(120.0), "edm_vpred.sigma_min": torch.tensor(0.002)},
}
"""The state-dict keys by which ComfyUI's SDXL class recognises a checkpoint's model type:
Playground v2.5 (EDM, sigmas 0.002-80) and a v-prediction EDM model (sigma_max 120)."""
_MODELS: dict = {}


def tiny_model(family: str, weight_seed: int = 1234):
    """A ModelPatcher around a tiny random UNet of layout ``family`` (a key of CONFIGS).

    Cached per family: tests must only ever sample clones (as nodes do); a test that
    checks the model stays untouched compares state dicts.
    """
    key = (family, weight_seed)
    if key not in _MODELS:
        _MODELS[key] = fresh_model(family, weight_seed)
    return _MODELS[key]


def fresh_model(family: str, weight_seed: int = 1234, **config_changes):
    """A new ModelPatcher around a new tiny UNet of layout ``family`` (never cached): for tests
    that change the module tree itself. ``config_changes`` are added to the UNet config."""
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = dict(CONFIGS[family], dtype=torch.float32, **config_changes)
    classes = {
        "sd15": comfy.supported_models.SD15,
        "sdxl": comfy.supported_models.SDXL,
        "sd2v": comfy.supported_models.SD20,
        "sdxl_refiner": comfy.supported_models.SDXLRefiner,
    }
    model_config = classes.get(family, classes[FAMILY_OF[family]])(config)
    model_config.set_inference_dtype(torch.float32, None)
    if family == "sd2v":
        model = comfy.model_base.BaseModel(model_config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    else:
        model = model_config.get_model(CHECKPOINT_MARKERS.get(family, {}))
    generator = torch.Generator().manual_seed(weight_seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


SHARP_ATTENTION_SCALE = 8.0
"""How much :func:`sharp_attention_model` scales the self-attention queries and keys."""


def sharp_attention_model(family: str, weight_seed: int = 1234):
    """A tiny model whose self-attention is far from uniform, so a wrong window shows.

    Random weights of 0.05 (and LayerNorm gains of 0.05) give attention logits of about
    1e-4: every token attends to all others nearly equally and any window layout gives
    almost the same output. Here the self-attention norms have unit gain and the query and
    key projections are scaled by :data:`SHARP_ATTENTION_SCALE`, which gives logits with a
    standard deviation of about 6, as in trained SD models. Cached per family, like
    :func:`tiny_model`.
    """
    key = ("sharp", family, weight_seed)
    if key not in _MODELS:
        model = fresh_model(family, weight_seed)
        with torch.no_grad():
            for name, module in model.get_model_object("diffusion_model").named_modules():
                if name.endswith(".norm1"):
                    module.weight.fill_(1.0)
                    module.bias.zero_()
                elif name.endswith(".attn1"):
                    module.to_q.weight.mul_(SHARP_ATTENTION_SCALE)
                    module.to_k.weight.mul_(SHARP_ATTENTION_SCALE)
        _MODELS[key] = model
    return _MODELS[key]


def assert_matches_a_decisive_reference(result, reference, unpatched, *, atol: float, rtol: float = 0.0) -> None:
    """``result`` equals ``reference`` within the tolerance, and that says something: the
    reference is at least ten times ``atol`` away from the ``unpatched`` result."""
    torch.testing.assert_close(result, reference, rtol=rtol, atol=atol)
    gap = float((reference - unpatched).abs().max())
    assert gap >= 10 * atol, f"the reference is only {gap:.3g} from the unpatched result (tolerance {atol:g})"


def rau_patches(model) -> list:
    """RAU-Net's Upsample patches, whichever way this ComfyUI takes them: ``(Upsample, handler)``
    patches where handlers reach Upsample layers, object patches on their ``forward`` before."""
    patches = model.model_options.get("transformer_options", {}).get("patches", {})
    handlers = [
        h for _, h in patches.get("forward_timestep_embed_patch", []) if type(h).__name__ == "ResolutionAwareUpsample"
    ]
    objects = [p for p in model.object_patches.values() if type(p).__name__ == "UpsampleForward"]
    return handlers + objects


def conditioning(family: str, seed: int = 7, tokens: int = 12) -> list:
    """A ComfyUI CONDITIONING list with random text embeddings of the tiny model's width."""
    generator = torch.Generator().manual_seed(seed)
    context_dim = CONFIGS[family]["context_dim"]
    extra = {}
    if FAMILY_OF[family] == "sdxl":
        extra = {"pooled_output": torch.randn(1, 1280, generator=generator)}
    return [[torch.randn(1, tokens, context_dim, generator=generator), extra]]


def sample(
    model,
    family: str,
    height: int,
    width: int,
    *,
    seed: int = 0,
    steps: int = 3,
    cfg: float = 5.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    batch: int = 1,
    control=None,
    **kwargs,
) -> torch.Tensor:
    """Sample a latent of height x width with ``model`` through ``comfy.sample.sample``.

    ``control``: a ControlNet (with its hint set) attached to both conditionings."""
    import comfy.sample

    latent = torch.zeros(batch, 4, height, width)
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = conditioning(family, seed=11)
    negative = conditioning(family, seed=12)
    if control is not None:
        positive, negative = with_control(positive, control), with_control(negative, control)
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, scheduler, positive, negative, latent, seed=seed, disable_pbar=True, **kwargs
    )


SOCKET_TYPES = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "CONTROL_NET", "MASK"}


def widget_inputs(node_cls, widget_values: list) -> dict:
    """Map a saved workflow's positional ``widgets_values`` onto input names, the way the
    ComfyUI frontend does: widgets in the order of the node's declared inputs, sockets skipped."""
    info = node_cls.GET_NODE_INFO_V1()
    names = [
        name
        for section in ("required", "optional")
        for name, spec in info["input"].get(section, {}).items()
        if spec[0] not in SOCKET_TYPES
    ]
    if len(widget_values) > len(names):
        raise AssertionError(f"{len(widget_values)} widget values for {len(names)} widgets: {names}")
    return dict(zip(names, widget_values))


def tiny_controlnet(family: str = "sd15", weight_seed: int = 99):
    """A ComfyUI ControlNet with the tiny UNet's layout and random (non-zero) weights."""
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.model_management as mm
    import comfy.ops

    config = dict(CONFIGS[family])
    for key in ("out_channels", "transformer_depth_output", "use_temporal_attention", "use_temporal_resblock"):
        config.pop(key, None)
    control_model = comfy.cldm.cldm.ControlNet(
        hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, **config
    )
    generator = torch.Generator().manual_seed(weight_seed)
    with torch.no_grad():
        for param in control_model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return comfy.controlnet.ControlNet(control_model, load_device=mm.get_torch_device())


def with_control(cond: list, control, strength: float = 1.0) -> list:
    """``cond`` with ``control`` attached, as ComfyUI's ControlNetApply nodes do."""
    return [[c[0], dict(c[1], control=control, control_apply_to_uncond=False)] for c in cond]


def control_hint(height: int, width: int, seed: int = 3) -> torch.Tensor:
    """A random hint image (B, 3, H*8, W*8) for a latent of height x width."""
    return torch.rand(1, 3, height * 8, width * 8, generator=torch.Generator().manual_seed(seed))
