"""The lab run: the same seeds through every configuration, at the native size and above.

Each configuration is what a user would wire in ComfyUI: a node (ours, or core Deep
Shrink) on the loaded lab model, then the sampling call the KSampler node makes
(``comfy.sample.sample``, with ComfyUI's noise drawn per seed), or the hires-fix users pick
instead: KSampler at the native size, Upscale Latent By, and a second KSampler at a low
denoise. Every image is read back by
:mod:`hidiff.quality.counter` in the model's own latent space (``process_latent_in``,
where the scenes were trained).

Seeds: image ``i`` starts from ComfyUI's noise for seed ``first_seed + i``; the images run
in batches of :data:`BATCH`, and an ancestral sampler draws its step noise for a batch
from the batch's first seed. The same settings give the same figures in every process.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.official import FAMILY_TRAITS, official_key
from . import counter, models

BATCH = 16
STEPS = 20
CFG = 4.0
SCHEDULER = "normal"
HIRES_DENOISE = 0.5
HIRES_UPSCALE = "nearest-exact"
"""Upscale Latent By's default method, as a user's hires-fix graph has it."""
SAMPLERS = ("euler", "euler_ancestral")
SCALES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 3), (4, 4), (2, 3))
"""Sizes as (height, width) multiples of the native side; the last one is non-square."""


SecondPass = Callable[[Any, Any, int, int, int], tuple[Any, Any]]
"""``(model, native samples, native, height, width) -> (model, latent)`` of a two-pass config's second pass."""


@dataclass(frozen=True)
class Config:
    """One way to sample at a size: a model transform, or a two-pass pipeline (``hires``):
    KSampler at the native size, then ``second`` (default: Upscale Latent By with the same
    model) and a KSampler at ``denoise`` with ``steps`` (the large pass's step count)."""

    name: str
    label: str
    patch: Callable[[Any, int, int, int], Any] | None = None
    hires: bool = False
    denoise: float = HIRES_DENOISE
    second: SecondPass | None = None
    steps: int = STEPS


def _node(name: str) -> Any:
    from ..bench import comfy_env

    return comfy_env.load_pack()[name]


def _result(output: Any) -> Any:
    return output.result[0] if hasattr(output, "result") else output[0]


def _deep_shrink(model: Any, native: int, height: int, width: int) -> Any:
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale

    from ..bench.comfy_env import placed_values

    return _result(PatchModelAddDownscale.execute(model=model, **placed_values(PatchModelAddDownscale)))


def _msw_msa(model: Any, native: int, height: int, width: int) -> Any:
    return _result(_node("ApplyMSWMSAAttentionSimple").execute(model_type="auto", model=model))


def _raunet_simple(res_mode: str) -> Callable[[Any, int, int, int], Any]:
    def patch(model: Any, native: int, height: int, width: int) -> Any:
        node = _node("ApplyRAUNetSimple")
        res_modes = next(item.options for item in node.define_schema().inputs if item.id == "res_mode")
        label = next(mode for mode in res_modes if mode.startswith(res_mode))
        return _result(
            node.execute(
                model=model, model_type="auto", res_mode=label, upscale_mode="default", ca_upscale_mode="default"
            )
        )

    return patch


def _auto(schedule: str, window_grid: str | None = None, raunet: bool = True) -> Callable[[Any, int, int, int], Any]:
    """The auto node told the lab model's native size; ``window_grid`` None keeps the node's default."""

    def patch(model: Any, native: int, height: int, width: int) -> Any:
        node = _node("ApplyHiDiffusion")
        advanced = f"native_resolution: {native * 8}\nschedule: {schedule}"
        if window_grid is not None:
            advanced += f"\nwindow_grid: {window_grid}"
        return _result(
            node.execute(
                model=model, width=width * 8, height=height * 8, raunet=raunet, msw_msa=True, advanced=advanced
            )
        )

    return patch


def _auto_ratio(model: Any, native: int, height: int, width: int) -> Any:
    """The auto node with the official table's schedule for the same multiple of a real
    model's native side: at 4x the lab's side, the schedule a real SD1.5 gets at 2048 px.

    The official thresholds are absolute sizes; this config measures them as ratios."""
    from ..comfyui.model_info import unet_map_of

    family = unet_map_of(model).family
    real_native = FAMILY_TRAITS[family].native_latent
    key = official_key(family, height * real_native // native, width * real_native // native)
    return _auto(key)(model, native, height, width)


GUIDED_DENOISE = 1.0
"""The guided hires fix's second pass: a KSampler at its default denoise."""


def _guided(advanced: str = "", msw_msa: bool = True, raunet: bool = True) -> SecondPass:
    """The HiDiffusion Hires Fix node on the native samples, as a user wires it."""

    def second(model: Any, samples: Any, native: int, height: int, width: int) -> tuple[Any, Any]:
        if height != width or height % native:
            raise ValueError("the guided node takes one whole scale for both sides")
        node = _node("HiDiffusionHiresFix")
        text = f"native_resolution: {native * 8}\n{advanced}"
        output = node.execute(
            model=model,
            latent={"samples": samples},
            scale_by=height / native,
            raunet=raunet,
            msw_msa=msw_msa,
            advanced=text,
        )
        patched, latent = output.result
        return patched, latent["samples"]

    return second


CONFIGS: tuple[Config, ...] = (
    Config("unpatched", "unpatched"),
    Config("deep_shrink", "Deep Shrink (core, defaults)", _deep_shrink),
    Config("msw_msa", "MSW-MSA Simple", _msw_msa),
    Config("raunet_low", "RAU-Net Simple low", _raunet_simple("low")),
    Config("raunet_high", "RAU-Net Simple high", _raunet_simple("high")),
    Config("raunet_ultra", "RAU-Net Simple ultra", _raunet_simple("ultra")),
    Config("auto", "HiDiffusion (auto node)", _auto("measured")),
    Config("auto_official", "HiDiffusion (auto node, schedule: official)", _auto("official")),
    Config("auto_ratio", "HiDiffusion (auto node, official schedule for the ratio to native)", _auto_ratio),
    Config("auto_sd15_2048", "HiDiffusion (auto node, schedule: sd15_2048)", _auto("sd15_2048")),
    Config("auto_2x2", "HiDiffusion (auto node, window_grid: 2x2)", _auto("measured", "2x2")),
    Config("auto_native", "HiDiffusion (auto node, window_grid: native)", _auto("measured", "native")),
    Config("auto_msw", "auto node, MSW-MSA only, window_grid: 2x2", _auto("measured", "2x2", raunet=False)),
    Config("auto_msw_native", "auto node, MSW-MSA only, window_grid: native", _auto("measured", "native", False)),
    Config("hires_fix", f"native + upscale + {HIRES_DENOISE} denoise", hires=True),
    Config(
        "hires_fix_auto",
        f"hires fix ({HIRES_DENOISE}) with the auto node's model (set up for the target) in both passes",
        _auto("measured"),
        hires=True,
    ),
    Config("hires_fix_1", "native + upscale + 1.0 denoise (the guided node's denoise)", hires=True, denoise=1.0),
    Config(
        "guided", "HiDiffusion Hires Fix (defaults), denoise 1.0", hires=True, denoise=GUIDED_DENOISE, second=_guided()
    ),
    Config(
        "guided_fft",
        "HiDiffusion Hires Fix, lowpass: fft",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("lowpass: fft"),
    ),
    Config(
        "guided_exp2",
        "HiDiffusion Hires Fix, exponent: 2",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("exponent: 2"),
    ),
    Config(
        "guided_exp5",
        "HiDiffusion Hires Fix, exponent: 5",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("exponent: 5"),
    ),
    Config(
        "guided_cut05",
        "HiDiffusion Hires Fix, cutoff: 0.5",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("cutoff: 0.5"),
    ),
    Config(
        "guided_cut1",
        "HiDiffusion Hires Fix, cutoff: 1",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("cutoff: 1"),
    ),
    Config(
        "guided_fft_cut05",
        "HiDiffusion Hires Fix, lowpass: fft, cutoff: 0.5",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("lowpass: fft\ncutoff: 0.5"),
    ),
    Config(
        "guided_10",
        "HiDiffusion Hires Fix (defaults), large pass at 10 steps",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided(),
        steps=10,
    ),
    Config(
        "guided_exp1_10",
        "HiDiffusion Hires Fix, exponent: 1, large pass at 10 steps",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("exponent: 1"),
        steps=10,
    ),
    Config(
        "guided_exp0_10",
        "HiDiffusion Hires Fix, exponent: 0 (the lock held to the end), large pass at 10 steps",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("exponent: 0"),
        steps=10,
    ),
    Config(
        "guided_no_views",
        "HiDiffusion Hires Fix, views: 0 (the large call alone)",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("views: 0"),
    ),
    Config(
        "guided_no_views_10",
        "HiDiffusion Hires Fix, views: 0 (the large call alone), large pass at 10 steps",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("views: 0"),
        steps=10,
    ),
    Config(
        "guided_no_msw_10",
        "HiDiffusion Hires Fix, msw_msa off, large pass at 10 steps",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided(msw_msa=False),
        steps=10,
    ),
    Config("guided_d075", "HiDiffusion Hires Fix, denoise 0.75", hires=True, denoise=0.75, second=_guided()),
    Config(
        "guided_off",
        "HiDiffusion Hires Fix, strength: 0 (no lock), denoise 1.0",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("strength: 0"),
    ),
    Config(
        "guided_off_no_views",
        "HiDiffusion Hires Fix, strength: 0 (no lock), views: 0, denoise 1.0",
        hires=True,
        denoise=GUIDED_DENOISE,
        second=_guided("strength: 0\nviews: 0"),
    ),
)
CONFIG_NAMES = tuple(config.name for config in CONFIGS)
LABELS = {config.name: config.label for config in CONFIGS}


@dataclass
class Cell:
    """The figures of one configuration at one size with one sampler."""

    config: str
    layout: str
    sampler: str
    height: int
    width: int
    images: int = 0
    duplicated: int = 0
    empty: int = 0
    malformed: int = 0
    one_good: int = 0
    subjects: int = 0
    detail: list[float] = field(default_factory=list)
    image_detail: list[float] = field(default_factory=list)
    """Every image's detail in seed order, NaN for an image without a subject to measure."""
    image_drawn: list[float] = field(default_factory=list)
    """Every image's drawn detail (:func:`drawn_detail_energy`) in seed order."""
    eyes: list[counter.Eyes] = field(default_factory=list)
    """Every image's eyes read at its scale (:func:`counter.read_eyes`), in seed order."""
    eye_overlaps: list[float] = field(default_factory=list)
    """Every image's eye-map overlap with the upscaled native sample of its seed."""
    seconds: float = 0.0
    error: str | None = None

    def add(self, readings: list[counter.Reading], details: list[float], drawn: list[float] | None = None) -> None:
        self.images += len(readings)
        self.duplicated += sum(r.duplicated for r in readings)
        self.empty += sum(r.subjects == 0 for r in readings)
        self.malformed += sum(r.malformed > 0 for r in readings)
        self.one_good += sum(r.subjects == 1 and r.well_formed == 1 for r in readings)
        self.subjects += sum(r.subjects for r in readings)
        self.detail.extend(d for d in details if not math.isnan(d))
        self.image_detail.extend(details)
        self.image_drawn.extend(drawn if drawn is not None else [float("nan")] * len(readings))

    def add_structure(self, eyes: list[counter.Eyes], overlaps: list[float]) -> None:
        self.eyes.extend(eyes)
        self.eye_overlaps.extend(overlaps)

    def structure(self) -> dict[str, float]:
        """The structure columns: images with one subject holding two clear eyes, clear eyes
        and specks per image, and the median eye-map overlap (NaN before any reading)."""
        if not self.eyes:
            return dict.fromkeys(("two_eyed_rate", "clear_eyes", "specks", "eye_overlap"), float("nan"))
        n = len(self.eyes)
        overlaps = [value for value in self.eye_overlaps if not math.isnan(value)]
        return {
            "two_eyed_rate": sum(eyes.two_eyed for eyes in self.eyes) / n,
            "clear_eyes": sum(eyes.clear for eyes in self.eyes) / n,
            "specks": sum(eyes.specks for eyes in self.eyes) / n,
            "eye_overlap": statistics.median(overlaps) if overlaps else float("nan"),
        }

    def median_detail(self, native_images: list[float]) -> float:
        """The median over seeds of each image's detail against the native sample of the same
        seed: a few images with large Laplacian energy cannot carry it, as they carry the mean."""
        return median_ratio(self.image_detail, native_images)

    def figures(
        self,
        native_detail: float | None = None,
        native_images: list[float] | None = None,
        native_drawn: list[float] | None = None,
    ) -> dict[str, Any]:
        n = max(self.images, 1)
        detail = sum(self.detail) / len(self.detail) if self.detail else float("nan")
        return {
            "config": self.config,
            "layout": self.layout,
            "sampler": self.sampler,
            "size": f"{self.width}x{self.height}",
            "images": self.images,
            "duplicate_rate": self.duplicated / n,
            "malformed_rate": self.malformed / n,
            "empty_rate": self.empty / n,
            "one_good_rate": self.one_good / n,
            "mean_subjects": self.subjects / n,
            "detail": detail / native_detail if native_detail else detail,
            "median_detail": self.median_detail(native_images) if native_images else float("nan"),
            "drawn_detail": median_ratio(self.image_drawn, native_drawn) if native_drawn else float("nan"),
            **self.structure(),
            "seconds_per_image": self.seconds / n,
            "error": self.error,
        }


def median_ratio(mine: list[float], native: list[float]) -> float:
    """The median over seeds of ``mine`` against ``native`` of the same seed (NaN and zero
    natives left out)."""
    ratios = sorted(m / n for m, n in zip(mine, native) if not (math.isnan(m) or math.isnan(n)) and n > 0)
    if not ratios:
        return float("nan")
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def _subject_inside(image: torch.Tensor) -> Any:
    """Subject pixels away from the subject's edges (so its outline is not read as detail)."""
    from scipy import ndimage

    from .scenes import MASK

    return ndimage.binary_erosion(image[MASK].detach().float().cpu().numpy() > 0, iterations=2)


def drawn_detail_energy(image: torch.Tensor, grid: tuple[int, int] = (1, 1)) -> float:
    """Detail a sampler drew, not an upscaler's blocks: the mean squared difference between
    neighbouring appearance pixels inside the subjects, over pairs that lie in one cell of the
    ``grid`` (rows, columns) lattice an integer Upscale Latent By leaves. Nearest-exact blocks
    read 0 here, however sharp their edges, where :func:`detail_energy` reads their edges as
    detail; on an image without blocks the pairs are a fair sample of all pairs. NaN without
    a subject."""
    import numpy as np

    from .scenes import APPEARANCE

    inside = _subject_inside(image)
    if not inside.any():
        return float("nan")
    values = image[APPEARANCE].detach().float().cpu().numpy()
    squares = []
    for axis, step in enumerate(grid):
        first = np.arange(values.shape[axis] - 1)
        keep = (first % step) != step - 1 if step > 1 else np.ones_like(first, dtype=bool)
        difference = np.diff(values, axis=axis)
        both = inside[:-1, :] & inside[1:, :] if axis == 0 else inside[:, :-1] & inside[:, 1:]
        mask = both & (keep[:, None] if axis == 0 else keep[None, :])
        squares.append(difference[mask] ** 2)
    pairs = np.concatenate(squares)
    return float(pairs.mean()) if pairs.size else float("nan")


def detail_energy(image: torch.Tensor) -> float:
    """High-frequency energy inside the subjects: the mean squared Laplacian of the
    appearance channel over subject pixels away from their edges (NaN without any)."""
    from scipy import ndimage

    from .scenes import APPEARANCE

    inside = _subject_inside(image)
    if not inside.any():
        return float("nan")
    laplace = ndimage.laplace(image[APPEARANCE].detach().float().cpu().numpy())
    return float((laplace[inside] ** 2).mean())


def sample_batch(
    model: Any,
    layout: str,
    native: int,
    seeds: list[int],
    height: int,
    width: int,
    sampler: str,
    *,
    config: Config | None = None,
) -> torch.Tensor:
    """The images of ``seeds`` at ``height`` x ``width`` (latent pixels), in the model's space;
    a two-pass ``config`` samples the native size first."""
    import comfy.sample
    import comfy.utils

    hires = config is not None and config.hires
    positive, negative = models.conditioning(native=native)
    first_height, first_width = (native, native) if hires else (height, width)
    latent = torch.zeros(len(seeds), model.model.latent_format.latent_channels, first_height, first_width)
    noise = torch.cat([comfy.sample.prepare_noise(latent[:1], seed) for seed in seeds])
    samples = _ksampler(model, seeds[0], sampler, positive, negative, latent, noise, 1.0, STEPS)
    if hires:
        if config.second is None:
            second_model = model
            upscaled = comfy.utils.common_upscale(samples, width, height, HIRES_UPSCALE, "disabled")
        else:
            second_model, upscaled = config.second(model, samples, native, height, width)
        noise = torch.cat([comfy.sample.prepare_noise(upscaled[:1], seed) for seed in seeds])
        samples = _ksampler(
            second_model, seeds[0], sampler, positive, negative, upscaled, noise, config.denoise, config.steps
        )
    return model.model.process_latent_in(samples)


def _ksampler(
    model: Any,
    seed: int,
    sampler: str,
    positive: list,
    negative: list,
    latent: Any,
    noise: Any,
    denoise: float,
    steps: int,
) -> Any:
    """KSampler's own sampling call (``nodes.common_ksampler`` minus its noise, which is per seed here)."""
    import comfy.sample

    return comfy.sample.sample(
        model, noise, steps, CFG, sampler, SCHEDULER, positive, negative, latent,
        denoise=denoise, seed=seed, disable_pbar=True,
    )  # fmt: skip


def run_cell(
    model: Any, layout: str, native: int, config: Config, scale: tuple[int, int], sampler: str, seeds: list[int]
) -> tuple[Cell, torch.Tensor | None]:
    """One configuration at one size and sampler over ``seeds``; returns the cell and the images."""
    height, width = native * scale[0], native * scale[1]
    cell = Cell(config.name, layout, sampler, height * 8, width * 8)
    try:
        patched = config.patch(model, native, height, width) if config.patch else model
    except Exception as exc:  # a node refusing a size is a finding, not a crash
        cell.error = f"{type(exc).__name__}: {exc}"
        return cell, None
    images = []
    for start in range(0, len(seeds), BATCH):
        chunk = seeds[start : start + BATCH]
        began = time.perf_counter()
        try:
            out = sample_batch(patched, layout, native, chunk, height, width, sampler, config=config)
        except ValueError as exc:  # a node refusing a size is a finding, not a crash
            cell.error = f"{type(exc).__name__}: {exc}"
            return cell, None
        cell.seconds += time.perf_counter() - began
        cell.add(
            counter.read_all(out, native),
            [detail_energy(image) for image in out],
            [drawn_detail_energy(image, scale) for image in out],
        )
        images.append(out)
    return cell, torch.cat(images)


def read_structure(
    cell: Cell, images: torch.Tensor, natives: torch.Tensor, native: int, native_eyes: list[int], scale: tuple[int, int]
) -> None:
    """Read every image's eyes at its scale and its eye map against the native sample of its seed."""
    min_eye_area = counter.clear_eye_area(native_eyes, scale[0] * scale[1])
    cell.add_structure(
        [counter.read_eyes(image, native, min_eye_area) for image in images],
        [counter.eye_overlap(image, native_image) for image, native_image in zip(images, natives, strict=True)],
    )


@dataclass(frozen=True)
class LabSettings:
    """What one lab run samples."""

    layouts: tuple[str, ...] = models.TRAINED
    configs: tuple[str, ...] = CONFIG_NAMES
    scales: tuple[tuple[int, int], ...] = SCALES
    samplers: tuple[str, ...] = SAMPLERS
    seeds: int = 64
    first_seed: int = 0


def run(settings: LabSettings, on_row: Callable[[dict[str, Any]], None]) -> tuple[list[dict[str, Any]], dict]:
    """Every cell of ``settings``; returns the rows (detail relative to unpatched native
    samples of the same layout and sampler) and the images by (layout, config, scale, sampler)."""
    rows: list[dict[str, Any]] = []
    images: dict[tuple[str, str, tuple[int, int], str], torch.Tensor] = {}
    seeds = list(range(settings.first_seed, settings.first_seed + settings.seeds))
    for layout in settings.layouts:
        model = models.load(layout)
        native = models.native_of(layout)
        for sampler in settings.samplers:
            reference = run_cell(model, layout, native, CONFIGS[0], (1, 1), sampler, seeds)
            native_images_out = reference[1]
            native_eyes = [area for image in native_images_out for area in counter.eye_areas(image, native)]
            native_detail = reference[0].figures()["detail"]
            native_images = reference[0].image_detail
            native_drawn = reference[0].image_drawn
            images[(layout, CONFIGS[0].name, (1, 1), sampler)] = native_images_out  # the crops' first column
            if (1, 1) not in settings.scales:  # the native samples' row: what every structure figure is read against
                read_structure(reference[0], native_images_out, native_images_out, native, native_eyes, (1, 1))
                row = reference[0].figures(native_detail, native_images, native_drawn)
                rows.append(row)
                on_row(row)
            for scale in settings.scales:
                for config in CONFIGS:
                    if config.name not in settings.configs:
                        continue
                    if config is CONFIGS[0] and scale == (1, 1):
                        cell, out = reference  # the native reference is this very cell
                    else:
                        cell, out = run_cell(model, layout, native, config, scale, sampler, seeds)
                    if out is not None:
                        read_structure(cell, out, native_images_out, native, native_eyes, scale)
                    row = cell.figures(native_detail, native_images, native_drawn)
                    rows.append(row)
                    if out is not None:
                        images[(layout, config.name, scale, sampler)] = out
                    on_row(row)
    return rows, images


SHORT = LabSettings(
    layouts=("sdxl",),
    configs=("unpatched", "auto", "hires_fix", "guided"),
    scales=((3, 3),),
    samplers=("euler",),
    seeds=4,
)
"""The short run: the README's recommendation at a glance, the same 4 seeds at 3x the side
unpatched, with the HiDiffusion node, the hires fix and the HiDiffusion Hires Fix (defaults,
KSampler at denoise 1), with the structure columns."""
