"""The benchmarked models: full-size SD1.5 and SDXL built by ComfyUI's own classes, random weights.

The UNet configs are the ones ComfyUI's ``model_detection.py`` derives from real
checkpoints, so layers, widths and attention heads are exactly those of a loaded model.
The node settings of each configuration are what a user would pick for that family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WEIGHT_STD = 0.02
"""N(0, 0.02) weights keep activations in a normal range through the UNet's depth (GroupNorm
renormalises every block), so timings are not distorted by denormals, infs or NaNs."""
TEXT_TOKENS = 77

_COMMON = {
    "use_checkpoint": False,
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SD15_UNET = dict(
    _COMMON,
    adm_in_channels=None,
    num_res_blocks=[2, 2, 2, 2],
    channel_mult=[1, 2, 4, 4],
    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    transformer_depth_middle=1,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    use_linear_in_transformer=False,
    context_dim=768,
    num_heads=8,
)

SDXL_UNET = dict(
    _COMMON,
    num_classes="sequential",
    adm_in_channels=2816,
    num_res_blocks=[2, 2, 2],
    channel_mult=[1, 2, 4],
    transformer_depth=[0, 0, 2, 2, 10, 10],
    transformer_depth_middle=10,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
    use_linear_in_transformer=True,
    context_dim=2048,
    num_head_channels=64,
)


def _blocks(kind: str, text: str) -> frozenset[tuple[str, int]]:
    return frozenset((kind, int(item)) for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its UNet config and the node inputs of each benchmarked configuration.

    Node inputs not given here keep the node's own defaults. ``msw`` windows the Simple
    preset's blocks over the whole schedule (the preset itself starts at 20 %, which would
    leave the benchmarked first sigma unwindowed); ``raunet`` holds the seed pack's
    recommended RAU-Net settings for the family. Every effect is active at the first
    sigma, so one call shows the full effect.
    """

    name: str
    title: str
    model_class: str
    unet: dict[str, Any]
    msw_input: str
    msw_output: str
    raunet: dict[str, Any]
    pooled_output: bool = False
    native_resolution: int | None = None
    """The native size ``msw-native`` sizes its windows by (None: the model's own)."""
    msw: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        msw = {"input_blocks": self.msw_input, "output_blocks": self.msw_output, "start_time": 0.0, "end_time": 1.0}
        object.__setattr__(self, "msw", msw)

    @property
    def msw_native(self) -> dict[str, Any]:
        """MSW-MSA's inputs with ``window_grid: native`` (and the spec's native size, if any)."""
        yaml = "window_grid: native"
        if self.native_resolution is not None:
            yaml += f"\nnative_resolution: {self.native_resolution}"
        return dict(self.msw, yaml_parameters=yaml)

    @property
    def msw_blocks(self) -> frozenset[tuple[str, int]]:
        """The blocks MSW-MSA windows, for the hand count of attention FLOPs."""
        return _blocks("input", self.msw_input) | _blocks("output", self.msw_output)

    @property
    def context_dim(self) -> int:
        return int(self.unet["context_dim"])


SD15 = ModelSpec(
    name="sd15",
    title="SD1.5",
    model_class="SD15",
    unet=SD15_UNET,
    msw_input="1,2",
    msw_output="9,10,11",
    # The seed pack's SD1.5 workflow: the node's defaults (RAU-Net in 3 / out 8 to 45 %,
    # CA in 4 / out 8, bicubic, avg-pool factor 2) with the CA part ending at 25 %.
    raunet={"ca_end_time": 0.25},
)

SDXL = ModelSpec(
    name="sdxl",
    title="SDXL",
    model_class="SDXL",
    unet=SDXL_UNET,
    msw_input="4,5",
    msw_output="3,4,5",
    # The seed's SDXL "ultra" Simple preset: RAU-Net in 3 / out 5, CA in 4 / out 5 to 60 %.
    raunet={
        "input_blocks": "3",
        "output_blocks": "5",
        "ca_input_blocks": "4",
        "ca_output_blocks": "5",
        "ca_end_time": 0.6,
    },
    pooled_output=True,
)

MODELS = {spec.name: spec for spec in (SD15, SDXL)}


def build_model(spec: ModelSpec, seed: int, dtype: Any = None) -> Any:
    """A ModelPatcher around ComfyUI's model class for ``spec``, weights N(0, 0.02) from ``seed``.

    ``dtype`` None picks what ComfyUI picks for a checkpoint of this size on this device
    (fp32 on a CPU, usually fp16 on a GPU), with ComfyUI's manual cast where it needs one.
    """
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    model_config = getattr(comfy.supported_models, spec.model_class)(dict(spec.unet))
    device = mm.get_torch_device()
    if dtype is None:
        dtype = mm.unet_dtype(device=device, supported_dtypes=model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, device, model_config.supported_inference_dtypes))
    model = model_config.get_model({})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            noise = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, WEIGHT_STD, generator=generator)
            param.copy_(noise)
    model.eval()
    # The class ComfyUI's own loaders use: ModelPatcherDynamic where dynamic VRAM is on.
    patcher = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    return patcher(model, load_device=device, offload_device=mm.unet_offload_device())


def text_conditioning(spec: ModelSpec, generator: Any, width: int, height: int) -> list:
    """A CONDITIONING list with random text embeddings of the real width (and SDXL's pooled output)."""
    import torch

    extra: dict[str, Any] = {}
    if spec.pooled_output:
        extra = {"pooled_output": torch.randn(1, 1280, generator=generator), "width": width, "height": height}
    return [[torch.randn(1, TEXT_TOKENS, spec.context_dim, generator=generator), extra]]


def parameter_count(patcher: Any) -> int:
    return sum(p.numel() for p in patcher.model.parameters())
