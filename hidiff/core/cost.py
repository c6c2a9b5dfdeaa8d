"""An analytic FLOP estimate of one UNet call, per feature-map plan.

The Inspect node reports how much a HiDiffusion phase saves before anything is sampled.
Each block's convolutions, linear layers and attention are read from its modules (by
class name, so this stays host-free) and costed at the size of the level they run at:

* conv: 2 * Cin * Cout * k^2 per output pixel; a Downsample's conv produces the next
  level's pixels, an Upsample's conv the level it returns to;
* linear (projections, feed-forward): 2 * in * out per token;
* self-attention: 4 * N^2 * C (scores and weighted sum), / 4 where MSW-MSA windows it;
* cross-attention: 4 * N * T * C with T = 77 text tokens.

It is an estimate: norms and activations are ignored, and a pooled level is costed at
the pooled size for every block of the level (the block that pools and the one that
restores really run at full size).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .unet_map import BlockInfo, UNetMap

TEXT_TOKENS = 77


@dataclass(frozen=True)
class BlockCost:
    """Per-token costs of one block, split by the level the work runs at."""

    main_per_token: float = 0.0
    """conv + linear FLOPs per token at the block's main level"""
    resample_per_token: float = 0.0
    """the Downsample/Upsample conv's FLOPs per token of the block's output level"""
    attention_channels: tuple[int, ...] = ()
    """inner width of each self-attention (its cost is quadratic in tokens)"""
    cross_channels: tuple[int, ...] = ()
    """inner width of each cross-attention"""


def _conv_flops_per_pixel(conv: nn.Module) -> float:
    weight = conv.weight
    return 2.0 * weight.shape[0] * weight[0].numel()


def block_cost(block: nn.Module, info: BlockInfo) -> BlockCost:
    """The costs of one block, read from its modules."""
    main, resample, self_attn, cross_attn = 0.0, 0.0, [], []
    layers = list(block) if isinstance(block, nn.Sequential) else [block]
    resampler = layers[-1] if (info.downsample or info.upsample) and layers else None
    for path, module in block.named_modules():
        name = type(module).__name__
        if "emb_layers" in path:
            continue  # once per sample, not per token
        if isinstance(module, nn.Conv2d) or name == "Conv2d":
            inside_resampler = resampler is not None and any(module is m for m in resampler.modules())
            if inside_resampler:
                resample += _conv_flops_per_pixel(module)
            else:
                main += _conv_flops_per_pixel(module)
        elif isinstance(module, nn.Linear):
            main += 2.0 * module.in_features * module.out_features
        elif name == "BasicTransformerBlock":
            width = module.attn1.to_q.out_features
            (cross_attn if getattr(module, "disable_self_attn", False) else self_attn).append(width)
            if getattr(module, "attn2", None) is not None:
                cross_attn.append(module.attn2.to_q.out_features)
    return BlockCost(main, resample, tuple(self_attn), tuple(cross_attn))


def unet_costs(diffusion_model: nn.Module, unet: UNetMap) -> dict[tuple[str, int], BlockCost]:
    """The cost of every block of an ldm UNet, keyed like ComfyUI's block ids."""
    costs = {}
    for info, block in zip(unet.input_blocks, diffusion_model.input_blocks, strict=True):
        costs[("input", info.index)] = block_cost(block, info)
    for info in unet.middle_blocks:
        costs[("middle", 0)] = block_cost(diffusion_model.middle_block, info)
    for info, block in zip(unet.output_blocks, diffusion_model.output_blocks, strict=True):
        costs[("output", info.index)] = block_cost(block, info)
    return costs


def estimate_flops(
    unet: UNetMap,
    costs: dict[tuple[str, int], BlockCost],
    sizes: tuple[tuple[int, int], ...],
    windowed: frozenset[tuple[str, int]] = frozenset(),
) -> float:
    """FLOPs of one call (batch 1) with the level sizes ``sizes`` (height, width per level)."""
    total = 0.0
    for kind in ("input", "middle", "output"):
        for info in unet.blocks(kind):
            cost = costs[(kind, info.index)]
            main_tokens = sizes[info.main_level][0] * sizes[info.main_level][1]
            out_tokens = sizes[info.level][0] * sizes[info.level][1]
            total += cost.main_per_token * main_tokens + cost.resample_per_token * out_tokens
            attention = 4.0 * main_tokens * main_tokens * sum(cost.attention_channels)
            total += attention / 4 if (kind, info.index) in windowed else attention
            total += 4.0 * main_tokens * TEXT_TOKENS * sum(cost.cross_channels)
    return total
