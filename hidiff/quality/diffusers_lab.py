"""The lab's models in diffusers: the guided hires fix through ``hidiff.diffusers.upscale``
beside the ComfyUI node, on the same weights and seeds.

The committed weights are ComfyUI UNets in the original (LDM) key layout, the layout of the
single-file checkpoints users load; diffusers' own converter
(``convert_ldm_unet_checkpoint``, what ``from_single_file`` uses) maps them onto a
``UNet2DConditionModel`` whose config is read from ComfyUI's final config of the same model
(so its head counts are the ones ComfyUI's SD15 and SDXL classes set). The pipeline around
it is the stock SD or SDXL one with the lab's conditioning passed as embeddings, the sampler
ComfyUI's euler on the KSampler's own sigmas (passed to diffusers' Euler as ``sigmas=``), and
a small random VAE that only gives the pipeline its 8x scale factor: every run returns
latents, which the counter reads as the ComfyUI runs' are read.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from . import counter, lab, models

POOLED = 1280
"""SDXL's pooled text embedding, zeros here as in :func:`models.conditioning`."""
SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
"""ComfyUI's discrete SD schedule (``ModelSamplingDiscrete`` defaults). Every run passes the
KSampler's own sigmas (:func:`comfy_sigmas`), so the spacing only sets the first noise's
scale: ``leading`` gives sqrt(1 + sigma_max^2), as ComfyUI scales the noise of a full denoise."""


def comfy_sigmas(model: Any) -> list[float]:
    """The sigmas of the lab's KSampler (its scheduler and steps) for a ComfyUI ``model``."""
    import comfy.samplers

    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), lab.SCHEDULER, lab.STEPS)
    return [float(sigma) for sigma in sigmas]


def unet_config(layout: str) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` config of the lab model of ``layout``, from ComfyUI's own."""
    import comfy.supported_models

    model_config = getattr(comfy.supported_models, models.MODEL_CLASSES[layout])(
        dict(models.LAYOUTS[layout], dtype=torch.float32)
    )
    unet = model_config.unet_config
    channels = [unet["model_channels"] * mult for mult in unet["channel_mult"]]
    blocks = unet["num_res_blocks"]
    attention = [unet["transformer_depth"][level * blocks[level]] > 0 for level in range(len(channels))]
    if unet["num_head_channels"] == -1:
        heads = [unet["num_heads"]] * len(channels)
    else:
        heads = [width // unet["num_head_channels"] for width in channels]
    config: dict[str, Any] = {
        "sample_size": models.native_of(layout),
        "in_channels": unet["in_channels"],
        "out_channels": unet["out_channels"],
        "block_out_channels": tuple(channels),
        "layers_per_block": blocks[0],
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        "up_block_types": tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        "attention_head_dim": tuple(heads),
        "use_linear_projection": unet["use_linear_in_transformer"],
        "cross_attention_dim": unet["context_dim"],
        "norm_num_groups": 32,
    }
    if unet.get("adm_in_channels"):
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(unet["adm_in_channels"] - POOLED) // 6,
            projection_class_embeddings_input_dim=unet["adm_in_channels"],
        )
    return config


def load_unet(layout: str) -> Any:
    """The committed lab model of ``layout`` as a diffusers ``UNet2DConditionModel`` (fp32, eval)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from safetensors.torch import load_file

    config = unet_config(layout)
    checkpoint = {
        f"model.diffusion_model.{name}": value.float() for name, value in load_file(models.weights_path(layout)).items()
    }
    unet = UNet2DConditionModel(**config)
    unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, config), strict=True)
    return unet.eval()


FLUX_CONVERTER_WIDTH = 3072
"""The hidden width diffusers' Flux converter (``convert_flux_transformer_checkpoint_to_diffusers``)
assumes when it splits a single block's fused q/k/v/MLP projection: FLUX.1's."""


def transformer_config(layout: str = "flux") -> dict[str, Any]:
    """The ``FluxTransformer2DModel`` config of the lab's Flux-layout model, from its ComfyUI layout."""
    flux = models.LAYOUTS[layout]
    patch_values = flux["patch_size"] ** 2
    return {
        "patch_size": 1,  # diffusers' Flux takes the 2x2 patches packed by the pipeline
        "in_channels": flux["in_channels"] * patch_values,
        "num_layers": flux["depth"],
        "num_single_layers": flux["depth_single_blocks"],
        "attention_head_dim": flux["hidden_size"] // flux["num_heads"],
        "num_attention_heads": flux["num_heads"],
        "joint_attention_dim": flux["context_in_dim"],
        "pooled_projection_dim": flux["vec_in_dim"],
        "guidance_embeds": flux["guidance_embed"],
        "axes_dims_rope": tuple(flux["axes_dim"]),
    }


def load_transformer(layout: str = "flux") -> Any:
    """The committed Flux-layout lab model as a diffusers ``FluxTransformer2DModel`` (fp32, eval).

    The weights are in the original (BFL) key layout, which diffusers' own converter maps. That
    converter splits each single block's fused projection at FLUX.1's width (3072) whatever the
    model's, so the lab model's narrower rows are laid at those offsets (zero rows between)
    before converting, and the padding is cut off after: every converted tensor is then the
    model's own shape, and nothing but zeros is cut."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    flux = models.LAYOUTS[layout]
    width, mlp = flux["hidden_size"], int(flux["hidden_size"] * flux["mlp_ratio"])
    checkpoint = {name: value.float() for name, value in load_file(models.weights_path(layout)).items()}
    for name in [name for name in checkpoint if name.startswith("single_blocks.") and ".linear1." in name]:
        checkpoint[name] = _at_converter_offsets(checkpoint[name], (width, width, width, mlp))
    converted = convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    transformer = FluxTransformer2DModel(**transformer_config(layout))
    shapes = {name: value.shape for name, value in transformer.state_dict().items()}
    for name, value in converted.items():
        rows = shapes[name][0]
        if value.shape != shapes[name]:
            if value.shape[1:] != shapes[name][1:] or value[rows:].abs().max() != 0:
                raise ValueError(f"{name}: converted to {tuple(value.shape)}, the model has {tuple(shapes[name])}")
            converted[name] = value[:rows]
    transformer.load_state_dict(converted, strict=True)
    return transformer.eval()


def _at_converter_offsets(fused: torch.Tensor, parts: tuple[int, ...]) -> torch.Tensor:
    """``fused`` (q, k, v, MLP rows of ``parts``) with each part at the start of the block the
    converter cuts for it (3072, 3072, 3072, 4 · 3072 rows), zeros after."""
    width = FLUX_CONVERTER_WIDTH
    blocks = (width, width, width, 4 * width)
    pieces = []
    for piece, block in zip(torch.split(fused, parts, dim=0), blocks, strict=True):
        padding = torch.zeros(block - piece.shape[0], *piece.shape[1:], dtype=piece.dtype)
        pieces += [piece, padding]
    return torch.cat(pieces, dim=0)


def scale_factor_vae(channels: int) -> Any:
    """A small random VAE of four levels: it only gives a pipeline its 8x scale factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=channels,
        norm_num_groups=8,
        layers_per_block=1,
    )


def pipeline(layout: str) -> Any:
    """The stock SD (SD1.5 layout), SDXL or Flux pipeline around the lab model, without text
    encoders. The Flux one's scheduler has no shift of its own (static shift 1): every run
    passes ComfyUI's sigmas, already shifted by ComfyUI's Flux schedule."""
    from diffusers import (
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if layout in models.DITS:
        pipe = FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
            vae=scale_factor_vae(models.LAYOUTS[layout]["in_channels"]),
            transformer=load_transformer(layout),
            text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe
    vae = scale_factor_vae(4)
    parts = {"vae": vae, "unet": load_unet(layout), "scheduler": EulerDiscreteScheduler(**SCHEDULER)}
    parts.update(text_encoder=None, tokenizer=None)
    if layout == "sdxl":
        pipe = StableDiffusionXLPipeline(**parts, text_encoder_2=None, tokenizer_2=None)
    else:
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(layout: str, seeds: list[int], sigmas: list[float]) -> dict[str, Any]:
    """The lab's prompt, CFG, sigmas and per-seed generators as pipeline keyword arguments."""
    batch = len(seeds)
    native_px = models.native_of(layout) * 8
    if layout in models.DITS:  # true CFG against an empty prompt; the sigmas without the final 0
        return {
            "prompt_embeds": models.context(batch),
            "pooled_prompt_embeds": torch.zeros(batch, models.CONTEXT_DIM),
            "negative_prompt_embeds": torch.zeros(batch, 1, models.CONTEXT_DIM),
            "negative_pooled_prompt_embeds": torch.zeros(batch, models.CONTEXT_DIM),
            "true_cfg_scale": lab.CFG,
            "sigmas": sigmas[:-1],
            "generator": [torch.Generator().manual_seed(seed) for seed in seeds],
            "output_type": "latent",
        }
    kwargs: dict[str, Any] = {
        "prompt_embeds": models.context(batch),
        "negative_prompt_embeds": torch.zeros(batch, 1, models.CONTEXT_DIM),
        "sigmas": sigmas,
        "guidance_scale": lab.CFG,
        "generator": [torch.Generator().manual_seed(seed) for seed in seeds],
        "output_type": "latent",
    }
    if layout == "sdxl":
        kwargs.update(
            pooled_prompt_embeds=torch.zeros(batch, POOLED),
            negative_pooled_prompt_embeds=torch.zeros(batch, POOLED),
            original_size=(native_px, native_px),
            target_size=(native_px, native_px),
        )
    return kwargs


@dataclass
class Run:
    """One way of sampling the seeds: its images (model space) and seconds."""

    label: str
    images: torch.Tensor
    seconds: float


def timed(label: str, sample: Callable[[], torch.Tensor]) -> Run:
    began = time.perf_counter()
    with torch.no_grad():
        images = sample()
    return Run(label, images, time.perf_counter() - began)


def comfyui_runs(model: Any, layout: str, scale: int, seeds: list[int]) -> tuple[Run, Run]:
    """The ComfyUI native samples and the HiDiffusion Hires Fix node's, as the lab samples them
    (the node's run samples its own native pass, the same images as the first run's, and its
    seconds include it)."""
    native = models.native_of(layout)
    guided = next(config for config in lab.CONFIGS if config.name == "guided")
    first = timed("ComfyUI: native", lambda: lab.sample_batch(model, layout, native, seeds, native, native, "euler"))
    side = native * scale
    second = timed(
        f"ComfyUI: HiDiffusion Hires Fix {scale}x",
        lambda: lab.sample_batch(model, layout, native, seeds, side, side, "euler", config=guided),
    )
    return first, second


def diffusers_runs(layout: str, scale: int, seeds: list[int], sigmas: list[float]) -> tuple[Run, Run, Run]:
    """The diffusers native samples, ``upscale`` of them, and ``upscale`` with the lock and the
    native views off (HiDiffusion's large pass alone, from the upscaled latents)."""
    from ..core.settings import GuideSettings
    from ..diffusers import upscale

    pipe = pipeline(layout)
    side_px = models.native_of(layout) * 8
    native = timed(
        "diffusers: native",
        lambda: unpacked(pipe, pipe(height=side_px, width=side_px, **call_kwargs(layout, seeds, sigmas)).images),
    )
    guided = timed(
        f"diffusers: upscale {scale}x",
        lambda: unpacked(pipe, upscale(pipe, native.images, scale, **call_kwargs(layout, seeds, sigmas)).images),
    )
    free = timed(
        f"diffusers: upscale {scale}x, lock and views off (strength 0, views 0)",
        lambda: unpacked(
            pipe,
            upscale(
                pipe,
                native.images,
                scale,
                guide=GuideSettings(strength=0.0, views=0.0),
                **call_kwargs(layout, seeds, sigmas),
            ).images,
        ),
    )
    return native, guided, free


def unpacked(pipe: Any, latents: torch.Tensor) -> torch.Tensor:
    """A pipeline's latents as (batch, channels, height, width): a Flux pipeline's are packed
    2x2-patch tokens on a square grid (the lab's images are square)."""
    if latents.ndim == 4:
        return latents
    from ..diffusers.calls import unpack

    side = round(latents.shape[1] ** 0.5)
    return unpack(latents, (side, side))


def compare(layout: str, scale: int, seeds: list[int]) -> tuple[list[dict[str, Any]], list[Run]]:
    """Both ways at the native size and at ``scale`` x the side: a row of figures per run, and
    the runs. Each large run is compared with the ComfyUI node's image of the same seed, each
    native run with ComfyUI's native image."""
    model = models.load(layout)
    comfy_native, comfy_guided = comfyui_runs(model, layout, scale, seeds)
    diffusers_native, diffusers_guided, diffusers_free = diffusers_runs(layout, scale, seeds, comfy_sigmas(model))
    diffusers_guided.seconds += diffusers_native.seconds  # both passes, as the node's run is timed
    diffusers_free.seconds += diffusers_native.seconds
    native = models.native_of(layout)
    native_drawn = [lab.drawn_detail_energy(image) for image in comfy_native.images]
    native_eyes = [area for image in comfy_native.images for area in counter.eye_areas(image, native)]
    rows = []
    for run, against in (
        (comfy_native, comfy_native),
        (diffusers_native, comfy_native),
        (comfy_guided, comfy_guided),
        (diffusers_guided, comfy_guided),
        (diffusers_free, comfy_guided),
    ):
        readings = counter.read_all(run.images, native)
        overlaps = [counter.mask_iou(mine, theirs) for mine, theirs in zip(run.images, against.images, strict=True)]
        grid = (run.images.shape[-2] // native, run.images.shape[-1] // native)
        drawn = [lab.drawn_detail_energy(image, grid) for image in run.images]
        clear_area = counter.clear_eye_area(native_eyes, grid[0] * grid[1])
        eyes = [counter.read_eyes(image, native, clear_area) for image in run.images]
        eye_overlaps = [
            counter.eye_overlap(image, native_image)
            for image, native_image in zip(run.images, comfy_native.images, strict=True)
        ]
        rows.append(
            {
                "run": run.label,
                "size": f"{run.images.shape[-1] * 8}x{run.images.shape[-2] * 8}",
                "images": len(readings),
                "duplicate_rate": sum(r.duplicated for r in readings) / len(readings),
                "mean_subjects": sum(r.subjects for r in readings) / len(readings),
                "subjects": [r.subjects for r in readings],
                "mask_iou": overlaps,
                "median_mask_iou": statistics.median(overlaps),
                "drawn_detail": lab.median_ratio(drawn, native_drawn),
                "two_eyed_rate": sum(e.two_eyed for e in eyes) / len(eyes),
                "mean_specks": sum(e.specks for e in eyes) / len(eyes),
                "median_eye_overlap": statistics.median(eye_overlaps),
                "seconds_per_image": run.seconds / len(readings),
            }
        )
    return rows, [comfy_native, diffusers_native, comfy_guided, diffusers_guided, diffusers_free]


def picture(runs: list[Run], path: Any, title: str) -> Any:
    """One row per run; native images are shown enlarged (nearest) to the large size."""
    from .pictures import grid

    size = max(run.images.shape[-1] for run in runs)
    rows = [(run.label, functional.interpolate(run.images, size=(size, size), mode="nearest")) for run in runs]
    return grid(rows, path, zoom=1, title=title)


def markdown(rows: list[dict[str, Any]], layout: str, scale: int, command: str, picture_link: str | None) -> str:
    """The page: what was compared, the table, the subjects and overlaps per seed, the picture."""
    lines = [
        f"# The lab's {layout.upper()}-layout model in diffusers: `upscale` beside the ComfyUI node at {scale}x",
        "",
        f"Generated by `{command}`. The same committed weights, seeds, prompt, CFG {lab.CFG:g}, "
        f"{lab.STEPS} euler steps on ComfyUI's `{lab.SCHEDULER}` sigmas (diffusers' Euler takes them as `sigmas=`) "
        "and guided defaults. Mask IoU: the overlap of each image's subject mask with the ComfyUI run's "
        "image of the same seed at the same size (1 = the same subjects in the same place). Drawn detail: "
        "median over seeds against ComfyUI's native image of the seed. Seconds per image include the native "
        "pass for the two-pass runs. HiDiffusion under the lock is the auto node's measured schedule in both "
        "(`upscale`'s default). Two-eyed, specks and eye overlap: the structure readings of the lab's tables "
        "([quality.md](../quality.md)), the eye overlap against ComfyUI's native image of the seed, upscaled.",
        "",
        "| run | size | duplicated | subjects | median mask IoU | two-eyed | specks | eye overlap | drawn detail "
        "| s/image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['run']} | {row['size']} | {row['duplicate_rate']:.0%} | {row['mean_subjects']:.2f} | "
            f"{row['median_mask_iou']:.2f} | {row['two_eyed_rate']:.0%} | {row['mean_specks']:.2f} | "
            f"{row['median_eye_overlap']:.2f} | {row['drawn_detail']:.2f} | {row['seconds_per_image']:.2f} |"
        )
    lines += ["", "Per seed (subjects; mask IoU):", ""]
    for row in rows:
        pairs = ", ".join(f"{n}; {iou:.2f}" for n, iou in zip(row["subjects"], row["mask_iou"], strict=True))
        lines.append(f"- {row['run']}: {pairs}")
    if picture_link:
        lines += ["", f"![{layout} {scale}x, ComfyUI and diffusers]({picture_link})"]
    return "\n".join(lines) + "\n"
