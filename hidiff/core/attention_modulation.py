"""FAM's attention modulation: the native image's self-attention guiding the large pass's.

Far above its native size a model draws its trained-size features on an enlarged
subject: a head 16x larger (4x the side) gets covered in small eyes. FAM (arXiv
2411.18552, §3.3) blends the self-attention maps of the native image into the large
pass's, in the decoder's self-attention layers:

    M' = λ·U(M_native) + (1 − λ)·M_large,        output = M'·V_large

``U`` upsamples the native map along queries and keys. Taken as nearest upsampling with
rows renormalised (each native key's weight shared by the large keys it covers), it
factorises, so no N² matrix is formed:

    U(M_native)·V = up_queries( softmax(Q_n K_nᵀ) · pool_keys(V) )

one native-size attention on the area-pooled values, upsampled back to the large token
grid (bilinear along queries, so the blend adds no blocks). ``Q_n``, ``K_n`` come from a
native-size call on the noised reference (the adapters run it; :func:`noised_reference`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(q, k, v) -> out`` on (B, N, heads·dim) tokens, heads handled inside."""

REFERENCE_NOISE_SEED = 0
"""The seed of the fixed noise the native reference is diffused with (FAM and DemoFusion
noise the reference with one fixed noise for the whole run); its own generator, so no
random state of the user's is drawn from."""


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H·W, C) tokens as a (B, C, H, W) map."""
    batch, count, channels = tokens.shape
    if count != grid[0] * grid[1]:
        raise ValueError(f"{count} tokens are not a {grid[0]}x{grid[1]} grid")
    return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) map as (B, H·W, C) tokens."""
    return feature_map.flatten(2).transpose(1, 2)


def pool_tokens(tokens: torch.Tensor, grid: tuple[int, int], to: tuple[int, int]) -> torch.Tensor:
    """Tokens on a ``grid`` area-averaged to the ``to`` grid (the renormalised key upsampling's transpose)."""
    return map_to_tokens(functional.adaptive_avg_pool2d(tokens_to_map(tokens, grid), to))


def upsample_tokens(tokens: torch.Tensor, grid: tuple[int, int], to: tuple[int, int]) -> torch.Tensor:
    """Tokens on a ``grid`` bilinearly upsampled to the ``to`` grid (the query upsampling)."""
    feature_map = functional.interpolate(tokens_to_map(tokens, grid), size=to, mode="bilinear", align_corners=False)
    return map_to_tokens(feature_map)


def native_attention_output(
    q_native: torch.Tensor,
    k_native: torch.Tensor,
    v_large: torch.Tensor,
    native_grid: tuple[int, int],
    large_grid: tuple[int, int],
    attention: Attention,
) -> torch.Tensor:
    """``U(M_native)·V_large`` on the large token grid, through one native-size attention."""
    pooled = pool_tokens(v_large, large_grid, native_grid)
    return upsample_tokens(attention(q_native, k_native, pooled), native_grid, large_grid)


def modulate(
    large_output: torch.Tensor,
    q_native: torch.Tensor,
    k_native: torch.Tensor,
    v_large: torch.Tensor,
    native_grid: tuple[int, int],
    large_grid: tuple[int, int],
    weight: float,
    attention: Attention,
) -> torch.Tensor:
    """``λ·U(M_native)·V + (1 − λ)·M_large·V`` given the large pass's own output ``M_large·V``."""
    if weight == 0.0:
        return large_output
    native = native_attention_output(q_native, k_native, v_large, native_grid, large_grid, attention)
    return torch.lerp(large_output, native.to(large_output.dtype), weight)


def noised_reference(reference: torch.Tensor, sigma: torch.Tensor, batch: int) -> torch.Tensor:
    """The native reference (R, C, h, w) diffused to each call's ``sigma`` (one per batch
    entry) with a fixed noise (:data:`REFERENCE_NOISE_SEED`), repeated to ``batch`` (which R
    must divide): the input of the native-size call the maps come from."""
    generator = torch.Generator(device="cpu").manual_seed(REFERENCE_NOISE_SEED)
    noise = torch.randn(reference.shape, generator=generator, dtype=torch.float32).to(reference.device)
    repeats = batch // reference.shape[0]
    noisy = reference.float().repeat(repeats, 1, 1, 1)
    noise = noise.repeat(repeats, 1, 1, 1)
    return noisy + sigma.float().reshape(-1, 1, 1, 1).to(noisy.device) * noise
