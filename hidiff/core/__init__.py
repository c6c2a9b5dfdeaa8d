"""Framework-neutral HiDiffusion core; imports nothing but torch.

Modules:
    windows   MSW-MSA: 2x2 shifted-window self-attention, exact at every size.
    schedule  time ranges (percent / timestep / sigma) and the step of a sigma.
    unet_map  reading block kinds, levels and pairs from a loaded UNet.
    raunet    RAU-Net's operators: RAD, RAU, CA downscale, fadeout.
    settings  the typed settings of one RAU-Net and one MSW-MSA application.
    presets   the per-family settings of the Simple nodes, placed on the model's blocks.
    official  the official switching schedule per family and size.
    measured  the schedules the quality lab measured, and the choice between them and the official one.
    gate      the native-size gate: one rule for "this call is at or below the native size".
    guide     the guided hires fix's low-band lock on the denoised prediction.
    plan      the automatic plan: native-size gate, blocks, phases and the settings of both effects.
    cost      an analytic FLOP estimate of one UNet call.
"""
