"""What a diffusers ``UNet2DConditionModel`` looks like, read from its modules.

The family (SD1.x/SD2.x or SDXL) decides where the official method acts, and it is read
from the structure, never from a model name: SD1.x/SD2.x-like UNets have image
self-attention from the first (full-resolution) level, SDXL-like UNets only from the
second. Finetunes, inpainting UNets (9 input channels), SD2.x-768 and Playground-style
models therefore need no table of names. Everything HiDiffusion hooks is checked here,
so an unusual UNet is refused at apply time with its layout named, not deep inside a
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.downsampling import Downsample2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..core.official import FAMILY_TRAITS
from ..core.unet_map import FAMILY_NAMES, Family, family_by_attention


class UnsupportedModelError(ValueError):
    """A model HiDiffusion cannot be applied to; the message names what the model is."""


@dataclass(frozen=True)
class DiffusersLayout:
    """Where HiDiffusion acts in one diffusers UNet.

    Args:
        family: SD15 (SD1.x/SD2.x) or SDXL, from where self-attention starts.
        levels: number of resolution levels (down blocks).
        attention_level: the finest level with image self-attention (MSW-MSA acts there).
        rad_level: the level whose Downsample becomes RAD (mirrored Upsample: RAU).
        pool_level: the level pooled after its first (resnet, attention) pair.
        restore_pair: the pair of the mirrored up block after which the pooled map is
            restored: the last pair that consumes a pooled skip (1 in SD1.x/SDXL, where the
            pooled level has 2 down pairs).
        native_latent: latent side the model was trained at (``config.sample_size``).
        in_channels: UNet input channels (9 for inpainting UNets).
    """

    family: Family
    levels: int
    attention_level: int
    rad_level: int
    pool_level: int
    restore_pair: int
    native_latent: int
    in_channels: int

    def mirror(self, level: int) -> int:
        """Index of the up block that runs at ``level`` (the one that consumes its skips)."""
        return self.levels - 1 - level

    def describe(self) -> str:
        """A short human description for messages."""
        return f"{FAMILY_NAMES[self.family]}-like UNet ({self.levels} levels, self-attention from level {self.attention_level})"


def unwrap_unet(model: object) -> object:
    """The module under a ``torch.compile`` wrapper (its ``_orig_mod``), else the model."""
    return getattr(model, "_orig_mod", model)


def read_layout(unet: nn.Module) -> DiffusersLayout:
    """Read and check the layout of ``unet``; raise :class:`UnsupportedModelError` naming it."""
    if not isinstance(unet, UNet2DConditionModel):
        raise UnsupportedModelError(
            f"{type(unet).__name__} is not a UNet2DConditionModel; HiDiffusion applies to "
            f"{', '.join(FAMILY_NAMES.values())} UNets (DiT models such as SD3 or Flux are not UNets)"
        )
    down, up = list(unet.down_blocks), list(unet.up_blocks)
    summary = _summary(down)
    if len(down) != len(up) or len(down) < 3:
        raise UnsupportedModelError(f"this UNet has {summary} and {len(up)} up blocks; {_EXPECTED}")
    attention_levels = [k for k, block in enumerate(down) if _self_attention(block)]
    family = family_by_attention(attention_levels[0] if attention_levels else None)
    if family is None:
        first = f"from level {attention_levels[0]}" if attention_levels else "nowhere"
        raise UnsupportedModelError(f"this UNet has {summary} with image self-attention {first}; {_EXPECTED}")
    traits = FAMILY_TRAITS[family]
    layout = DiffusersLayout(
        family=family,
        levels=len(down),
        attention_level=attention_levels[0],
        rad_level=traits.rad_level,
        pool_level=traits.pool_level,
        restore_pair=len(down[traits.pool_level].resnets) - 1,
        native_latent=_native_latent(unet, traits.native_latent),
        in_channels=int(unet.config.in_channels),
    )
    _check_resamplers(down, up, summary)
    _check_pairs(layout, down, up, summary)
    return layout


_EXPECTED = (
    "HiDiffusion expects an SD1.x/SD2.x-like layout (self-attention from level 0) or an SDXL-like layout "
    "(self-attention from level 1), with at least 3 levels"
)


def _summary(down: list[nn.Module]) -> str:
    return f"{len(down)} down blocks ({', '.join(type(b).__name__ for b in down)})"


def _self_attention(block: nn.Module) -> bool:
    """Whether ``block`` has Transformer2DModels whose attn1 attends to the image tokens."""
    transformers = [a for a in getattr(block, "attentions", None) or () if isinstance(a, Transformer2DModel)]
    return bool(transformers) and all(self_attention_blocks(t) for t in transformers)


def self_attention_blocks(transformer: nn.Module) -> list[BasicTransformerBlock]:
    """The transformer blocks of ``transformer`` whose attn1 is image self-attention."""
    return [
        tb
        for tb in getattr(transformer, "transformer_blocks", ())
        if isinstance(tb, BasicTransformerBlock) and not tb.only_cross_attention and not tb.attn1.is_cross_attention
    ]


def _native_latent(unet: UNet2DConditionModel, fallback: int) -> int:
    """The training latent side: ``config.sample_size`` (64 SD1.x, 96 SD2.x-768, 128 SDXL)."""
    size = unet.config.sample_size
    if isinstance(size, (list, tuple)):
        size = max(size)
    return int(size) if size else fallback


def _check_resamplers(down: list[nn.Module], up: list[nn.Module], summary: str) -> None:
    """Every level but the last must leave through a stride-2 3x3 Downsample2D with padding 1
    (RAD reads it on every other pixel) and come back through an interpolating Upsample2D
    (RAU interpolates to the skip size)."""
    for k, block in enumerate(down[:-1]):
        sampler = (getattr(block, "downsamplers", None) or [None])[0]
        conv = _base_layer(getattr(sampler, "conv", None))
        ok = (
            isinstance(sampler, Downsample2D)
            and sampler.use_conv
            and sampler.padding == 1
            and isinstance(conv, nn.Conv2d)
            and tuple(conv.kernel_size) == (3, 3)
            and tuple(conv.stride) == (2, 2)
        )
        if not ok:
            raise UnsupportedModelError(
                f"this UNet has {summary}; down_blocks.{k} does not end in a stride-2 3x3 Downsample2D with padding 1"
            )
    for j, block in enumerate(up[:-1]):
        sampler = (getattr(block, "upsamplers", None) or [None])[0]
        if not (isinstance(sampler, Upsample2D) and sampler.interpolate and not sampler.use_conv_transpose):
            raise UnsupportedModelError(
                f"this UNet has {summary}; up_blocks.{j} does not end in an interpolating Upsample2D"
            )


def _base_layer(layer: nn.Module | None) -> nn.Module | None:
    """The layer under adapter wrappers such as peft's LoRA layers (their ``base_layer``)."""
    while layer is not None and hasattr(layer, "base_layer"):
        layer = layer.base_layer
    return layer


def _check_pairs(layout: DiffusersLayout, down: list[nn.Module], up: list[nn.Module], summary: str) -> None:
    """Pooling after the first down pair makes every skip of that level pooled; the mirrored
    up block restores after the last pair that consumes one, so it needs one more pair for
    the full-size skip that follows."""
    pairs_down = len(down[layout.pool_level].resnets)
    pairs_up = len(up[layout.mirror(layout.pool_level)].resnets)
    if pairs_down < 1 or pairs_up < pairs_down + 1:
        raise UnsupportedModelError(
            f"this UNet has {summary}; the pooled level {layout.pool_level} has {pairs_down} down and {pairs_up} up "
            "pairs, expected at least one more up pair than down pairs"
        )
    if not _self_attention(up[layout.mirror(layout.attention_level)]):
        raise UnsupportedModelError(
            f"this UNet has {summary}; up_blocks.{layout.mirror(layout.attention_level)} has no self-attention"
        )
