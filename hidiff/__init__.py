"""HiDiffusion (RAU-Net + MSW-MSA) for ComfyUI, on a framework-neutral torch core.

Packages:
    core       torch-only mechanisms: windows, schedule, block lists, UNet map, presets.
    comfyui    the ComfyUI adapter: V3 nodes, patch wiring, per-run state.
    diffusers  the diffusers adapter: apply_hidiffusion / remove_hidiffusion through hooks.
"""

__version__ = "0.1.0"
