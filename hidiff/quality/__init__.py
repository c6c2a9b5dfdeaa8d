"""The quality lab: does HiDiffusion keep one subject at 2-4x a model's native size?

No Stable Diffusion weights can be had here, so the lab builds its own instrument: scenes
with exactly one structured subject (:mod:`.scenes`), a counter that reads them back
exactly (:mod:`.counter`), and small UNets in the SD1.5 and SDXL layouts trained on
those scenes, sampled larger than their native size with and without HiDiffusion.
It measures composition at scale, not realism.
"""
