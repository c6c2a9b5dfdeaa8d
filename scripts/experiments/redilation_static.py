"""Experiment: ScaleCrafter/FreeScale re-dilation of the deep resnets' convs (object patches), on the Hires Fix."""

import dataclasses, json, sys, torch
from hidiff.bench import comfy_env

comfy_env.import_comfyui(cpu=True)
from hidiff.quality import lab, models, report

layout, scale, seeds, dil = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
advanced = sys.argv[5] if len(sys.argv) > 5 else ""
model = models.load(layout)
native = models.native_of(layout)
unet = model.model.diffusion_model
deep_level = int(sys.argv[6]) if len(sys.argv) > 6 else 2
from hidiff.comfyui.model_info import unet_map_of

umap = unet_map_of(model)
paths = []
for kind, blocks in (
    ("input_blocks", umap.input_blocks),
    ("middle_block", umap.middle_blocks),
    ("output_blocks", umap.output_blocks),
):
    for info in blocks:
        if info.level < deep_level:
            continue
        base = f"{kind}.{info.index}" if kind != "middle_block" else "middle_block"
        mod = unet.get_submodule(base)
        for name, sub in mod.named_modules():
            if (
                type(sub).__name__ == "Conv2d"
                and sub.kernel_size == (3, 3)
                and sub.stride == (1, 1)
                and ("in_layers" in name or "out_layers" in name)
            ):
                if kind == "middle_block" and not name.startswith(f"{info.index}."):
                    continue
                paths.append(f"{base}.{name}")
paths = sorted(set(paths))
print(len(paths), paths[:4], file=sys.stderr)
base_second = lab._guided(advanced)


def second(m, samples, nat, h, w):
    patched, lat = base_second(m, samples, nat, h, w)
    if dil > 1:
        patched = patched.clone()
        for p in paths:
            patched.add_object_patch(f"diffusion_model.{p}.dilation", (dil, dil))
            patched.add_object_patch(f"diffusion_model.{p}.padding", (dil, dil))
    return patched, lat


cfg = lab.Config(f"dil{dil}", f"dilation {dil} {advanced}", hires=True, denoise=1.0, second=second, steps=10)
lab.CONFIGS = (lab.CONFIGS[0], cfg)
settings = lab.LabSettings(
    layouts=(layout,), configs=(cfg.name,), scales=((scale, scale),), samplers=("euler",), seeds=seeds
)
rows, images = lab.run(settings, lambda row: print(report.format_row(row), file=sys.stderr))
lab.LABELS[cfg.name] = cfg.label
report.write_grids(images, f"/tmp/lab/dil{dil}_{layout}_L{deep_level}")
