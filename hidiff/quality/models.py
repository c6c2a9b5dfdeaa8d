"""The lab's small models: ComfyUI's own UNet classes in the SD1.5 and SDXL layouts, and its
Flux class (a DiT with a rectified-flow schedule).

Both are built through ``comfy.supported_models`` (SD15 and SDXL), so every node sees an
SD1.x or an SDXL model with the real block layout: SD1.5's four levels with Downsample at
input blocks 3, 6 and 9 and attention on the first three levels; SDXL's three levels with
attention from level 1 down. Widths are small so they train on a CPU. They predict epsilon
on SD's discrete schedule (ComfyUI's default ``model_sampling`` for both), on 4-channel
scene "latents" of their native side (:data:`NATIVE`, no VAE).

The Flux layout (:data:`FLUX_LAYOUT`) is ComfyUI's ``Flux`` at a tiny width: 2x2 patches,
rotary positions, two double-stream and two single-stream blocks, no guidance embedding
(as Flux schnell), Flux's shifted rectified-flow sigmas (``ModelSamplingFlux``) and its
16-channel latent format: the scenes fill the first 4 channels and the other 12 are zero.

The cross-attention context is one fixed token (:func:`context`), and the unconditional
context zeros, so CFG works as with a text prompt. SDXL's ``y`` vector is what ComfyUI's
SDXL model builds from a zero pooled output and the native size in pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .scenes import DIT_FACES, UNET_FACES, Proportions

NATIVE = {"sdxl": 32, "sd15": 24, "flux": 32}
"""The side of each layout's training scenes, in latent pixels (x8 for its "image" size).
The SD1.5 layout's is 24: its full-resolution level has self-attention, whose cost grows
with the square of the token count (a training step at 32 takes 2.4x one at 24 here, and
sampling at 4x the side would take minutes per image)."""
LAYOUT_NAMES = ("sdxl", "sd15", "flux")
TRAINED: tuple[str, ...] = ("sdxl", "sd15", "flux")
"""The layouts whose weights are committed (``weights/lab_<layout>.safetensors`` with its
``.sha256``)."""
CONTEXT_DIM = 32
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

LAYOUTS: dict[str, dict[str, Any]] = {
    "sd15": {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": 4,
        "model_channels": 64,
        "num_res_blocks": [2, 2, 2, 2],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 1, 2, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": False,
        "context_dim": CONTEXT_DIM,
        "num_heads": 2,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
    "sdxl": {
        "use_checkpoint": False,
        "image_size": 32,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_classes": "sequential",
        "adm_in_channels": 2816,
        "in_channels": 4,
        "model_channels": 64,
        "num_res_blocks": [2, 2, 2],
        "transformer_depth": [0, 0, 1, 1, 1, 1],
        "channel_mult": [1, 1, 2],
        "transformer_depth_middle": 1,
        "use_linear_in_transformer": True,
        "context_dim": CONTEXT_DIM,
        "num_head_channels": 16,
        "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    },
}
"""Both layouts start with 64 channels, the fewest that work. ComfyUI's UNet normalises its
first level (and its output) with 32-group GroupNorm; at 32 channels each group is one
channel, whose per-image mean the norm removes, so the model cannot change the mean of any
channel of its image. Measured on two SDXL-layout models trained at 32 channels: every
sample's per-channel mean equalled its starting noise's (slope 1.00, residual std
0.01-0.03), where the scenes' mask channel has mean -2.4. At 64 channels each group pairs
two channels (the input copier's +x and -x), and the mean passes."""
FLUX_LAYOUT: dict[str, Any] = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "patch_size": 2,
    "vec_in_dim": CONTEXT_DIM,
    "context_in_dim": CONTEXT_DIM,
    "hidden_size": 128,
    "mlp_ratio": 4.0,
    "num_heads": 4,
    "depth": 2,
    "depth_single_blocks": 2,
    "axes_dim": [8, 12, 12],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": False,
}
LAYOUTS["flux"] = FLUX_LAYOUT
MODEL_CLASSES = {"sd15": "SD15", "sdxl": "SDXL", "flux": "Flux"}
DITS = ("flux",)
"""The layouts that are DiTs (trained on the rectified-flow objective, not epsilon)."""
UNET_LAYOUTS = tuple(name for name in LAYOUT_NAMES if name not in DITS)
"""The UNet layouts (the diffusers lab loads these into diffusers' UNet)."""


def face_of(layout: str) -> Proportions:
    """The faces a layout's scenes draw (:data:`hidiff.quality.scenes.DIT_FACES` for the DiTs)."""
    return DIT_FACES if layout in DITS else UNET_FACES


def context(batch: int = 1) -> torch.Tensor:
    """The one "prompt" the models know: a fixed token (seeded, the same in every process)."""
    token = torch.randn(1, 1, CONTEXT_DIM, generator=torch.Generator().manual_seed(20240601))
    return token.expand(batch, 1, CONTEXT_DIM).clone()


def base_model(layout: str) -> Any:
    """ComfyUI's BaseModel for ``layout`` in fp32 on the CPU, with ComfyUI's default init."""
    import comfy.supported_models

    config = dict(LAYOUTS[layout], dtype=torch.float32)
    if layout in DITS:
        import comfy.ldm.flux.model

        if "txt_ids_dims" in comfy.ldm.flux.model.FluxParams.__dataclass_fields__:  # ComfyUI 0.33.0 and newer
            config["txt_ids_dims"] = []
    model_config = getattr(comfy.supported_models, MODEL_CLASSES[layout])(config)
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model({})


def native_of(layout: str) -> int:
    return NATIVE[layout]


def adm(model: Any, batch: int, native: int) -> torch.Tensor | None:
    """SDXL's ``y`` for the native size (None for SD1.5; the zero pooled vector for a DiT), as
    ComfyUI builds it when sampling."""
    layout = LAYOUTS_BY_MODEL.get(type(model).__name__)
    if layout in DITS:
        return torch.zeros(batch, CONTEXT_DIM)
    if layout != "sdxl":
        return None
    pixels = native * 8
    y = model.encode_adm(pooled_output=torch.zeros(1, 1280), width=pixels, height=pixels)
    return y.expand(batch, -1)


LAYOUTS_BY_MODEL = {"BaseModel": "sd15", "SDXL": "sdxl", "Flux": "flux"}


def with_latent_channels(scenes_: torch.Tensor, channels: int) -> torch.Tensor:
    """Scenes (B, 4, H, W) as latents of ``channels`` channels: zeros after the scene's own."""
    extra = channels - scenes_.shape[1]
    if extra <= 0:
        return scenes_
    return torch.cat([scenes_, scenes_.new_zeros(scenes_.shape[0], extra, *scenes_.shape[2:])], dim=1)


def weights_path(layout: str) -> Path:
    return WEIGHTS_DIR / f"lab_{layout}.safetensors"


def load(layout: str) -> Any:
    """A ModelPatcher around the committed lab model of ``layout``, as a loader would give it."""
    import comfy.model_management as mm
    import comfy.model_patcher
    from safetensors import safe_open

    path = weights_path(layout)
    if not path.exists():
        raise FileNotFoundError(
            f"no lab model for the {layout} layout at {path} (Comfy Registry installs leave the lab's "
            f"weights out; a git clone has them); train it with `python -m hidiff quality train --layout {layout}`"
        )
    with safe_open(str(path), framework="pt") as weights:
        stored = weights.metadata() or {}
        state = {name: weights.get_tensor(name).float() for name in weights.keys()}  # noqa: SIM118 (safe_open is not iterable)
    if stored.get("layout") != layout or stored.get("native") != str(native_of(layout)):
        raise ValueError(f"{path} holds a {stored.get('layout')} model of native {stored.get('native')}, "
                         f"not {layout} at {native_of(layout)}")  # fmt: skip
    model = base_model(layout)
    if layout in DITS:  # stored in Flux's own key names; ComfyUI 0.33.0 renames the norms' "scale" to "weight"
        state = model.model_config.process_unet_state_dict(state)
    model.diffusion_model.load_state_dict(state, strict=True)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )
    patcher.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = pytorch_attention
    return patcher


def pytorch_attention(func: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    """ComfyUI's PyTorch (SDPA) attention, what it picks on every current GPU; on a CPU it
    would pick its sub-quadratic kernel, several times slower on these small models. Set
    through ComfyUI's per-call ``optimized_attention_override``, so every node's clone of
    the lab model keeps it and every attention call (MSW-MSA's windows too) goes through it."""
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def conditioning(native: int, batch_context: torch.Tensor | None = None) -> tuple[list, list]:
    """Positive and negative CONDITIONING for the lab models (SDXL's sizes set to the native ones)."""
    pixels = native * 8
    extra = {"pooled_output": torch.zeros(1, 1280), "width": pixels, "height": pixels}
    positive = [[context() if batch_context is None else batch_context, dict(extra)]]
    negative = [[torch.zeros(1, 1, CONTEXT_DIM), dict(extra)]]
    return positive, negative
