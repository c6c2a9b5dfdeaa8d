"""What a loaded UNet looks like: block kinds, resolution levels, pairs, family.

Everything the pack needs to know about a model is read from its module tree, so SD1.x,
SD2.x, SDXL and their finetunes, inpainting variants and pruned layouts get valid blocks
without tables of names. Modules are matched by class name (the ldm classes ComfyUI
uses: ``SpatialTransformer``, ``Downsample``, ``Upsample``), so this module imports only
torch and can be tested without a host.

Pairing rules, with n = number of input blocks (equal to the number of output blocks):

* a Downsample at input k is undone by the Upsample at output n - 1 - k (the output
  block whose Upsample returns to the level the Downsample left);
* a map pooled after input k (before its skip is stored) is restored at output n - k,
  the block that pops the still full-size skip of input k - 1;
* a map shrunk after its skip is stored (Deep Shrink style) is restored at output
  n - 1 - k, the block that pops that skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from torch import nn


class Family(str, Enum):
    """Model families whose layout HiDiffusion's presets were made for."""

    SD15 = "SD15"
    SDXL = "SDXL"

    def __str__(self) -> str:
        return self.value


FAMILY_NAMES = {Family.SD15: "SD1.x/SD2.x", Family.SDXL: "SDXL"}


@dataclass(frozen=True)
class BlockInfo:
    """One input, middle or output block of the UNet.

    Args:
        kind: "input", "middle" or "output".
        index: position in its list (always 0 for the middle block).
        level: resolution level of the block's output (0 = latent size, 1 = half, ...).
        attention_depth: number of transformer blocks in its SpatialTransformer (0 = none).
        self_attention: whether attn1 of those transformer blocks attends to the image
            tokens themselves (False where attn1 is cross-attention, as in SD-XS level 0).
        downsample: the block ends in a 2-D conv Downsample (stride 2, padding 1).
        upsample: the block ends in a 2-D Upsample.
    """

    kind: str
    index: int
    level: int
    attention_depth: int = 0
    self_attention: bool = False
    downsample: bool = False
    upsample: bool = False

    @property
    def main_level(self) -> int:
        """The level the block's resnets and attention run at (before its resampler)."""
        if self.downsample:
            return self.level - 1
        if self.upsample:
            return self.level + 1
        return self.level


@dataclass(frozen=True)
class UNetMap:
    """The structure of one UNet, and the rules that follow from it."""

    input_blocks: tuple[BlockInfo, ...]
    middle_blocks: tuple[BlockInfo, ...]
    output_blocks: tuple[BlockInfo, ...]
    levels: int
    supported: bool = True
    reason: str = ""
    family: Family | None = field(default=None)

    def blocks(self, kind: str) -> tuple[BlockInfo, ...]:
        """The blocks of one kind: "input", "middle" or "output"."""
        return {"input": self.input_blocks, "middle": self.middle_blocks, "output": self.output_blocks}[kind]

    def self_attention_blocks(self, kind: str) -> tuple[int, ...]:
        """Indices of the blocks of ``kind`` whose attn1 is image self-attention."""
        return tuple(b.index for b in self.blocks(kind) if b.self_attention)

    def downsample_pairs(self) -> dict[int, int]:
        """{input Downsample block: output Upsample block that undoes it}."""
        n = len(self.input_blocks)
        return {
            b.index: n - 1 - b.index
            for b in self.input_blocks
            if b.downsample
            and 0 <= n - 1 - b.index < len(self.output_blocks)
            and self.output_blocks[n - 1 - b.index].upsample
        }

    def pool_pairs(self) -> dict[int, int]:
        """{input block a map may be pooled after: output block that restores it}."""
        n = len(self.input_blocks)
        return {
            b.index: n - b.index
            for b in self.input_blocks[1:]
            if not b.downsample and n - b.index < len(self.output_blocks)
        }

    def after_skip_pairs(self) -> dict[int, int]:
        """{input block: output block} for a map shrunk after its skip is stored.

        The skip of input k keeps its full size, so the output block that pops it
        (n - 1 - k) is the first to see mismatched sizes and restores there, as Deep
        Shrink does.
        """
        n = len(self.input_blocks)
        return {b.index: n - 1 - b.index for b in self.input_blocks if 0 <= n - 1 - b.index < len(self.output_blocks)}

    def highest_attention_level(self) -> int | None:
        """The finest resolution level that has image self-attention."""
        levels = [b.main_level for b in self.input_blocks if b.self_attention]
        return min(levels) if levels else None

    def attention_blocks_at(self, kind: str, level: int) -> tuple[int, ...]:
        """Blocks of ``kind`` whose self-attention runs at ``level``."""
        return tuple(b.index for b in self.blocks(kind) if b.self_attention and b.main_level == level)

    def downsample_leaving(self, level: int) -> int | None:
        """The input block whose Downsample takes ``level`` to ``level + 1``."""
        return next((b.index for b in self.input_blocks if b.downsample and b.main_level == level), None)

    def first_block_at(self, level: int) -> int | None:
        """The first input block (after conv_in) that runs at ``level`` without resampling."""
        return next((b.index for b in self.input_blocks[1:] if not b.downsample and b.main_level == level), None)

    def describe(self) -> str:
        """A short human description used in messages."""
        if not self.supported:
            return self.reason
        name = FAMILY_NAMES.get(self.family, "UNet") if self.family else "UNet"
        return f"{name}-like UNet ({len(self.input_blocks)} input blocks, {self.levels} levels)"


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _block_info(kind: str, index: int, level: int, block: nn.Module) -> BlockInfo:
    depth, self_attn, down, up = 0, False, False, False
    layers = list(block) if isinstance(block, nn.Sequential) else [block]
    for layer in layers:
        names = _class_names(layer)
        if "SpatialTransformer" in names and "SpatialVideoTransformer" not in names:
            blocks = list(getattr(layer, "transformer_blocks", []))
            depth = len(blocks)
            self_attn = bool(blocks) and not any(getattr(tb, "disable_self_attn", False) for tb in blocks)
    if layers:
        last = layers[-1]
        names = _class_names(last)
        down = "Downsample" in names and getattr(last, "use_conv", False) and getattr(last, "dims", 2) == 2
        up = "Upsample" in names and getattr(last, "dims", 2) == 2
    return BlockInfo(kind, index, level, depth, self_attn, bool(down), bool(up))


_VIDEO_LAYERS = {"VideoResBlock", "SpatialVideoTransformer"}


def inspect_unet(diffusion_model: nn.Module) -> UNetMap:
    """Read the block structure of an ldm-style UNet (ComfyUI's ``UNetModel``).

    Models without ``input_blocks``/``output_blocks`` (DiTs such as Flux or SD3, Cascade,
    ...), video UNets and UNets that do not generate images (SDPose's pose heatmap head)
    come back with ``supported=False`` and a reason naming them.
    """
    cls_name = type(diffusion_model).__name__
    inputs = getattr(diffusion_model, "input_blocks", None)
    outputs = getattr(diffusion_model, "output_blocks", None)
    if not isinstance(inputs, nn.ModuleList) or not isinstance(outputs, nn.ModuleList):
        return UNetMap(
            (), (), (), 0, False, f"{cls_name} is not a UNet with input/output blocks (a DiT or other design)"
        )
    if getattr(diffusion_model, "heatmap_head", None) is not None:
        return UNetMap((), (), (), 0, False, f"{cls_name} with a heatmap head (SDPose-style) is not a generation UNet")
    if any(_class_names(m) & _VIDEO_LAYERS for m in diffusion_model.modules()):
        return UNetMap((), (), (), 0, False, f"{cls_name} is a video UNet (temporal layers)")

    input_infos, level = [], 0
    for i, block in enumerate(inputs):
        info = _block_info("input", i, level, block)
        if info.downsample:
            info = BlockInfo("input", i, level + 1, info.attention_depth, info.self_attention, True, False)
            level += 1
        input_infos.append(info)
    deepest = level
    middle = getattr(diffusion_model, "middle_block", None)
    middle_infos = (_block_info("middle", 0, deepest, middle),) if middle is not None else ()
    output_infos, level = [], deepest
    for i, block in enumerate(outputs):
        info = _block_info("output", i, level, block)
        if info.upsample:
            level -= 1
            info = BlockInfo("output", i, level, info.attention_depth, info.self_attention, False, True)
        output_infos.append(info)
    unet = UNetMap(tuple(input_infos), middle_infos, tuple(output_infos), deepest + 1)
    return UNetMap(unet.input_blocks, unet.middle_blocks, unet.output_blocks, unet.levels, True, "", _family(unet))


def family_by_attention(first_attention_level: int | None) -> Family | None:
    """The family rule both adapters use: the layout type by where image self-attention
    starts, never by a model name.

    SD1.x/SD2.x have it from level 0 (full resolution); SDXL and its relatives (finetunes,
    inpainting, Playground, refiner-like 4-level layouts, pruned SSD-1B/Vega) only from
    level 1. Anything else is neither.
    """
    return {0: Family.SD15, 1: Family.SDXL}.get(first_attention_level) if first_attention_level is not None else None


def _family(unet: UNetMap) -> Family | None:
    """The family of a ComfyUI UNet: :func:`family_by_attention`, for three levels at least
    with a Downsample out of each resolution the presets use."""
    if unet.levels < 3 or unet.downsample_leaving(0) is None:
        return None
    return family_by_attention(unet.highest_attention_level())
