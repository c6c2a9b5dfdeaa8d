"""The native-size gate: at or below the size a model was trained at, HiDiffusion only harms.

RAU-Net shrinks feature maps that are already the size the model composes at, and
MSW-MSA's windows cut a native-size token grid into pieces the model never saw, so a call
whose latent is no larger than the native latent should run as if nothing were patched.
Both adapters decide it with this one rule, per UNet call, from the call's own latent:
a hires fix's first pass, a tiled upscaler's native-size tiles or a multi-resolution
sampler's reference pass through the same patched model are then left alone.
"""

from __future__ import annotations


def at_or_below_native(height: int, width: int, native_latent: int) -> bool:
    """Whether a ``height`` x ``width`` latent is at or below the native size: its larger
    side against the native latent side (a wide native-height image is above it)."""
    return max(height, width) <= native_latent


def gated_message(height: int, width: int, native_latent: int) -> str:
    """What the user is told (once per run) when a call runs unpatched for its size."""
    return (
        f"HiDiffusion: a {width * 8}x{height * 8}px call (latent {width}x{height}) is at or below the native "
        f"{native_latent * 8}px, so it runs exactly as the unpatched model (HiDiffusion only harms there)"
    )
