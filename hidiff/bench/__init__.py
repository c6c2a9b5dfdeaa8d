"""``python -m hidiff bench``: HiDiffusion's speed claims measured on the user's own machine.

Everything runs inside real ComfyUI (its model classes, its sampler, the pack loaded by its
custom-node loader) with full-size SD1.5 / SDXL architectures and random weights, so no
checkpoint is needed:

* :mod:`.unet_call`: one UNet call, unpatched vs MSW-MSA / RAU-Net / both: time, FLOPs
  (attention included, checked against a hand count) and peak memory;
* :mod:`.schedule`: a whole sampling run, unpatched vs the Simple presets, step by step,
  with a PNG chart;
* :mod:`.cli`: the command line, with defaults per device.

See ``docs/benchmarks.md`` for the method and the figures.
"""
