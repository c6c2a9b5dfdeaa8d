"""Framework-neutral HiDiffusion core; imports nothing but torch.

Modules:
    windows   MSW-MSA: 2x2 shifted-window self-attention, exact at every size.
    schedule  time ranges (percent / timestep / sigma) and the step of a sigma.
    blocks    parsing the comma block lists users type.
    unet_map  reading block kinds, levels and pairs from a loaded UNet.
    presets   the per-family settings of the Simple nodes.
"""
