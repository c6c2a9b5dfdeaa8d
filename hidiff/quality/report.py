"""The lab's results as a reader gets them: a Markdown table, PNG grids, the results page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import counter, models
from .lab import CFG, HIRES_DENOISE, HIRES_UPSCALE, LABELS, SCHEDULER, STEPS, LabSettings


def format_row(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"{row['layout']} {row['sampler']} {row['size']} {row['config']}: {row['error']}"
    return (
        f"{row['layout']} {row['sampler']:<15} {row['size']:>9} {row['config']:<13} "
        f"dup {row['duplicate_rate']:5.0%}  empty {row['empty_rate']:5.0%}  "
        f"malformed {row['malformed_rate']:5.0%}  "
        f"one good {row['one_good_rate']:5.0%}  subjects {row['mean_subjects']:4.2f}  "
        f"detail {row['detail']:4.2f}  median detail {row.get('median_detail', float('nan')):4.2f}  "
        f"texture {row.get('drawn_detail', float('nan')):4.2f}  "
        f"two-eyed {row.get('two_eyed_rate', float('nan')):5.0%}  clear eyes {row.get('clear_eyes', float('nan')):4.2f}  "
        f"specks {row.get('specks', float('nan')):5.2f}  eye overlap {row.get('eye_overlap', float('nan')):4.2f}  "
        f"{row['seconds_per_image']:.2f} s/image"
    )


def describe(settings: LabSettings) -> dict[str, Any]:
    """The settings as JSON, with the fixed sampling parameters."""
    return {
        "layouts": list(settings.layouts),
        "configs": list(settings.configs),
        "scales": [f"{h}x{w}" for h, w in settings.scales],
        "samplers": list(settings.samplers),
        "seeds": settings.seeds,
        "first_seed": settings.first_seed,
        "steps": STEPS,
        "cfg": CFG,
        "scheduler": SCHEDULER,
        "hires_fix": {"upscale": HIRES_UPSCALE, "denoise": HIRES_DENOISE},
        "native": {layout: models.native_of(layout) for layout in settings.layouts},
    }


TABLE_COLUMNS = (
    ("duplicate_rate", "dup", "{:.0%}"),
    ("empty_rate", "empty", "{:.0%}"),
    ("malformed_rate", "malformed", "{:.0%}"),
    ("one_good_rate", "one good", "{:.0%}"),
    ("mean_subjects", "subjects", "{:.2f}"),
    ("detail", "detail", "{:.2f}"),
    ("median_detail", "median detail", "{:.2f}"),
    ("drawn_detail", "texture", "{:.2f}"),
    ("two_eyed_rate", "two-eyed", "{:.0%}"),
    ("clear_eyes", "clear eyes", "{:.2f}"),
    ("specks", "eye specks", "{:.2f}"),
    ("eye_overlap", "eye overlap", "{:.2f}"),
    ("seconds_per_image", "s/image", "{:.2f}"),
)


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, one line per layout, sampler, size and configuration."""
    head = ["layout", "sampler", "size", "configuration", *(title for _, title, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["layout"], row["sampler"], row["size"], LABELS[row["config"]]]
        if row["error"]:
            cells += [f"refused: {row['error']}"] + [""] * (len(TABLE_COLUMNS) - 1)
        else:
            cells += [fmt.format(row.get(key, float("nan"))) for key, _, fmt in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


GRID_SEEDS = 8


def write_grids(images: dict, folder: Any) -> list[Any]:
    """One PNG per layout, size and sampler: a row per configuration, the first seeds."""
    from .pictures import grid

    groups: dict[tuple[str, tuple[int, int], str], list[tuple[str, torch.Tensor]]] = {}
    for (layout, config, scale, sampler), out in images.items():
        groups.setdefault((layout, scale, sampler), []).append((LABELS[config], out[:GRID_SEEDS]))
    paths = []
    for (layout, scale, sampler), rows in groups.items():
        name = f"{layout}_{scale[0]}x{scale[1]}_{sampler}.png"
        title = f"{layout} layout, {scale[0]}x{scale[1]} the native side, {sampler}"
        paths.append(grid(rows, Path(folder) / name, title=title))
    return paths


def write_crops(images: dict, folder: Any) -> list[Any]:
    """One PNG per layout, size above native and sampler: the subjects' own channels beside
    the native sample's (:func:`pictures.subject_crops`), the first seeds."""
    from .lab import CONFIGS
    from .pictures import subject_crops

    groups: dict[tuple[str, tuple[int, int], str], list[tuple[str, torch.Tensor]]] = {}
    for (layout, config, scale, sampler), out in images.items():
        if scale != (1, 1):
            groups.setdefault((layout, scale, sampler), []).append((config, out[:GRID_SEEDS]))
    paths = []
    for (layout, scale, sampler), rows in groups.items():
        natives = images.get((layout, CONFIGS[0].name, (1, 1), sampler))
        if natives is None:
            continue
        name = f"{layout}_{scale[0]}x{scale[1]}_{sampler}_crops.png"
        path = subject_crops(natives[:GRID_SEEDS], rows, scale, Path(folder) / name)
        paths += [path] if path is not None else []
    return paths


SHORT_ROWS = (
    ("unpatched", "unpatched"),
    ("auto", "HiDiffusion"),
    ("hires_fix", "hires fix (0.5 denoise)"),
    ("guided", "HiDiffusion Hires Fix"),
)
"""The short picture's rows: configuration and the label a newcomer reads."""


def short_picture(images: dict, settings: LabSettings, path: Any) -> Any:
    """The short run's picture: one row per configuration of :data:`SHORT_ROWS` that ran, the
    same seeds; None when none ran."""
    from .pictures import grid

    layout, scale, sampler = settings.layouts[0], settings.scales[0], settings.samplers[0]
    rows = [
        (f"{label}: same seeds", images[(layout, name, scale, sampler)])
        for name, label in SHORT_ROWS
        if (layout, name, scale, sampler) in images
    ]
    if not rows:
        return None
    title = f"lab model ({layout} layout) at {scale[0]}x{scale[1]} its native side"
    return grid(rows, path, title=title)


def markdown(rows: list[dict[str, Any]], settings: LabSettings, command: str, grids: list[Any], base: Any) -> str:
    """The generated results page: command, machine, ComfyUI, settings, tables and grids."""
    import os

    from ..bench import comfy_env, machine

    info = machine.describe(torch.device("cpu"))
    lines = [
        "# Quality lab results (generated)",
        "",
        f"Written by `{command}`; do not edit by hand. How to read it: [quality.md](quality.md).",
        "",
        f"- Machine: {machine.name(info, torch.device('cpu'))}; ComfyUI {comfy_env.comfyui_version()}; "
        f"torch {torch.__version__}.",
        f"- {settings.seeds} seeds per cell (from {settings.first_seed}), {STEPS} steps, CFG {CFG}, scheduler "
        f"{SCHEDULER}; hires-fix: KSampler at the native size, Upscale Latent By ({HIRES_UPSCALE}), KSampler at "
        f"denoise {HIRES_DENOISE} (other two-pass rows name their denoise).",
        "- Native side: " + ", ".join(f"{layout} {models.native_of(layout)} latent px" for layout in settings.layouts),
        "- dup: images with 2 or more subjects; empty: images with none; malformed: images with a subject lacking "
        "one head and two eyes; one good: exactly one well-formed subject; detail: high-frequency energy inside "
        "subjects relative to unpatched native samples (1.00 = native detail); median detail: the median over "
        "seeds of each image's detail against the unpatched native sample of the same seed; texture: the "
        "same median of the squared neighbour differences inside one cell of the upscale grid (an Upscale Latent "
        "By's blocks read 0, their edges are not detail): a band to be inside (about 1 = the native samples' "
        "texture), not a score to maximise, since eyes drawn at the trained scale on an enlarged head read as "
        "texture too.",
        "- Structure at scale: two-eyed: images with one subject whose one head holds exactly two clear eyes (an "
        f"eye region of at least {counter.CLEAR_EYE_FRACTION:g} x the native samples' median eye area x the area "
        "scale); clear eyes and eye specks (smaller eye regions inside heads) per image; eye overlap: the median "
        "over seeds of the eye map's intersection over union with the bicubic-upscaled native sample of the "
        "same seed.",
        "",
        table(rows),
        "",
    ]
    for path in grids:
        lines += [f"![{path.stem}]({os.path.relpath(path, base)})", ""]
    return "\n".join(lines)
