"""Experiment: re-dilation gated by noise level (ScaleCrafter: dilated convs early, plain convs for the last steps)."""

import sys, torch, torch.nn.functional as F
from hidiff.bench import comfy_env

comfy_env.import_comfyui(cpu=True)
from comfy.patcher_extension import WrappersMP
from hidiff.quality import lab, models, report

layout, scale, seeds, dil, min_level, until = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
    float(sys.argv[6]),
)
advanced = sys.argv[7] if len(sys.argv) > 7 else ""
model = models.load(layout)
native = models.native_of(layout)
unet = model.model.diffusion_model
from hidiff.comfyui.model_info import unet_map_of, percent_to_sigma

umap = unet_map_of(model)
ms = model.get_model_object("model_sampling")
threshold = float(ms.percent_to_sigma(until))  # dilate while sigma >= threshold (sampling percent < until)
paths = []
for kind, blocks in (
    ("input_blocks", umap.input_blocks),
    ("middle_block", umap.middle_blocks),
    ("output_blocks", umap.output_blocks),
):
    for info in blocks:
        if info.level < min_level:
            continue
        base = f"{kind}.{info.index}" if kind != "middle_block" else "middle_block"
        for name, sub in unet.get_submodule(base).named_modules():
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
print(len(paths), file=sys.stderr)
STATE = {"sigma": None}


def wrapper(executor, *args, **kwargs):
    opts = kwargs.get("transformer_options", args[5] if len(args) > 5 else {})
    STATE["sigma"] = float(opts["sigmas"].max()) if "sigmas" in opts else None
    big = args[0].shape[-1] > native
    STATE["big"] = big
    return executor(*args, **kwargs)


def make_forward(conv):
    def forward(x):
        if STATE.get("big") and STATE["sigma"] is not None and STATE["sigma"] >= threshold:
            return F.conv2d(
                x, conv.weight.to(x.dtype), None if conv.bias is None else conv.bias.to(x.dtype), 1, dil, dil
            )
        return type(conv).forward(conv, x)

    return forward


base_second = lab._guided(advanced)


def second(m, samples, nat, h, w):
    patched, lat = base_second(m, samples, nat, h, w)
    patched = patched.clone()
    patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "exp", wrapper)
    for p in paths:
        patched.add_object_patch(f"diffusion_model.{p}.forward", make_forward(unet.get_submodule(p)))
    return patched, lat


name = f"dil{dil}L{min_level}u{until}"
cfg = lab.Config(
    name,
    f"dilation {dil} from level {min_level} until {until} {advanced}",
    hires=True,
    denoise=1.0,
    second=second,
    steps=10,
)
lab.CONFIGS = (lab.CONFIGS[0], cfg)
lab.LABELS[name] = cfg.label
settings = lab.LabSettings(
    layouts=(layout,), configs=(name,), scales=((scale, scale),), samplers=("euler",), seeds=seeds
)
rows, images = lab.run(settings, lambda row: print(report.format_row(row), file=sys.stderr))
report.write_grids(images, f"/tmp/lab/{name}_{layout}")
