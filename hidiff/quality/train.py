"""Training the lab's models on one-subject scenes, deterministically, on a CPU.

``python -m hidiff quality train --layout sd15|sdxl`` trains from a seed and writes
``hidiff/quality/weights/lab_<layout>.safetensors`` (and its SHA-256 next to it). Every
random draw (weights, scenes, timesteps, noise, the unconditional drop) comes from
generators seeded by ``--seed``, and the run uses a fixed thread count, so the same
command gives the same file.

The objective is ComfyUI's own for an epsilon model on SD's discrete schedule: a scene
x0, a timestep t, sigma = ``model_sampling.sigmas[t]``, the UNet input
(x0 + sigma * eps) / sqrt(sigma^2 + 1) and the squared error to eps, weighted towards the
noisy steps (:attr:`TrainSettings.weight_bounds`). The context is the lab's one token,
replaced by zeros for 10 % of the scenes so classifier-free guidance works. The weights
are stored in float16 (half the size; the lab samples in float32).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import scenes
from .models import adm, base_model, context, native_of, pytorch_attention, weights_path

logger = logging.getLogger("hidiffusion.quality")
UNCOND_RATE = 0.1
BATCH = {"sdxl": 16, "sd15": 8}
"""Scenes per training step. The SD1.5 layout has attention on its full-resolution level,
whose backward pass is half its step's time on this CPU (2.1 s a step of 8 scenes at
native 24, against 2.1 s for 16 scenes of the SDXL layout at native 32), so it learns
from half as many scenes per step to stay near the 45-minute budget."""


TRAINING_OPTIONS = {"optimized_attention_override": pytorch_attention}
"""Training runs attention through PyTorch's SDPA (ComfyUI's official per-call override):
on a CPU its backward is several times faster than the sub-quadratic kernel ComfyUI picks
there for inference. The lab samples through the same attention (see
:func:`hidiff.quality.models.pytorch_attention`)."""


@dataclass(frozen=True)
class TrainSettings:
    layout: str
    native: int | None = None
    """The scenes' side; None: the layout's own (:data:`hidiff.quality.models.NATIVE`)."""
    steps: int = 1200
    batch: int | None = None
    """Scenes per step; None: the layout's own (:data:`BATCH`)."""
    learning_rate: float = 1e-3
    seed: int = 0
    dataset: int = 8192
    ema: float = 0.999
    threads: int = 2
    weight_bounds: tuple[float, float] = (1.0, 4.0)
    """The loss weighs each scene's epsilon error by sigma^2 (its error in the image: x0 =
    x - sigma * eps), clamped to these bounds and normalised to mean 1 over the schedule.
    Measured: plain epsilon MSE (with a zero-output start) left noise of std 1.5 in the
    first steps' image after 1500 steps, which sampling kept; bounds (0.2, 25) composed
    whole subjects but starved the last steps, leaving noise of std about 0.4 on every
    image. The input-copier start (:func:`copy_path`) fixes the first steps, so these
    bounds only lean towards the noisy steps."""

    @property
    def side(self) -> int:
        """The scenes' side in latent pixels."""
        return self.native or native_of(self.layout)

    @property
    def scenes_per_step(self) -> int:
        return self.batch or BATCH[self.layout]


def initialise(unet: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded weights that start the UNet as the best guess a noise predictor has at high
    noise: "the input is the noise".

    ComfyUI builds its layers without initialising them (its loaders overwrite every
    weight), so the lab initialises them: fan-in normal for matrices and kernels, norms at
    1, biases at 0, and (as the ldm code intends) every residual branch's last layer and
    every transformer's output projection at 0, so each block starts as its skip path.
    Then :func:`copy_path` makes that skip path carry the input to the output. Without it a
    CPU's few thousand steps do not teach the model to copy its input to 1 %, and a 10 %
    copy error at sigma 5 leaves noise of std 0.5 in the image that sampling keeps.
    """
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for module in unet.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, norms):
                    param.fill_(1.0 if name == "weight" else 0.0)
                elif param.dim() > 1:
                    fan_in = param[0].numel()
                    param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
                else:
                    param.zero_()
        for module in unet.modules():
            if hasattr(module, "out_layers"):  # ResBlock
                module.out_layers[-1].weight.zero_()
            if hasattr(module, "proj_out"):  # SpatialTransformer
                module.proj_out.weight.zero_()
        copy_path(unet)


def copy_path(unet: torch.nn.Module) -> None:
    """Route the input, as +x and -x, from the first conv to the output conv.

    Two channels per input channel of the first conv hold +x and -x; the last output
    block's skip convolution takes them from the first level's skip tensor (the concat
    puts the skip after the upsampled path); the output conv reads
    SiLU(z) - SiLU(-z) = z, so the model outputs its input scaled by its spread. +x and -x
    sit in one GroupNorm group (channels 2k and 2k+1), whose mean is 0, so the norm keeps
    the input's own mean (see :data:`hidiff.quality.models.LAYOUTS`). Everything else
    starts at 0 or random, and training takes over.
    """
    conv_in = unet.input_blocks[0][0]
    inputs = conv_in.in_channels
    centre = conv_in.kernel_size[0] // 2
    last = unet.output_blocks[-1][0]
    skip = last.skip_connection
    offset = skip.in_channels - conv_in.out_channels
    out_conv = unet.out[-1]
    out_conv.weight.zero_()
    for channel in range(inputs):
        for sign, slot in ((1.0, 2 * channel), (-1.0, 2 * channel + 1)):
            conv_in.weight[slot].zero_()
            conv_in.weight[slot, channel, centre, centre] = sign
            skip.weight[slot].zero_()
            skip.weight[slot, offset + slot, 0, 0] = 1.0
            out_conv.weight[channel, slot, centre, centre] = sign
    out_conv.bias.zero_()


def loss_weight(sigma: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return torch.clamp(sigma**2, *bounds)


def dataset(settings: TrainSettings) -> torch.Tensor:
    """The training scenes, one per seed (seeds offset by the run's seed)."""
    first = settings.seed * 1_000_003
    return scenes.batch(range(first, first + settings.dataset), settings.side, settings.side)


def train(settings: TrainSettings, progress: Any = None, losses: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Train one lab model; returns the EMA weights of its ``diffusion_model``.

    ``progress`` gets a line every 200 steps; ``losses``, if given, every step's loss.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(settings, progress, losses)


def _train(settings: TrainSettings, progress: Any, losses: list[float] | None) -> dict[str, torch.Tensor]:
    torch.set_num_threads(settings.threads)
    generator = torch.Generator().manual_seed(settings.seed)
    model = base_model(settings.layout)
    unet = model.diffusion_model
    initialise(unet, generator)
    unet.requires_grad_(True)  # ComfyUI builds its models for inference only
    unet.train()
    sigmas = model.model_sampling.sigmas.float()
    data = dataset(settings)
    ema = {name: value.detach().clone() for name, value in unet.state_dict().items()}
    optimiser = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    cond = context(settings.scenes_per_step)
    mean_weight = loss_weight(sigmas, settings.weight_bounds).mean()
    y = adm(model, settings.scenes_per_step, settings.side)
    start = time.perf_counter()
    for step in range(settings.steps):
        index = torch.randint(0, data.shape[0], (settings.scenes_per_step,), generator=generator)
        x0 = data[index]
        flip = torch.rand(settings.scenes_per_step, generator=generator) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, sigmas.shape[0], (settings.scenes_per_step,), generator=generator)
        sigma = sigmas[t][:, None, None, None]
        eps = torch.randn(x0.shape, generator=generator)
        x_in = (x0 + sigma * eps) / torch.sqrt(sigma**2 + 1.0)
        drop = torch.rand(settings.scenes_per_step, generator=generator) < UNCOND_RATE
        ctx = torch.where(drop[:, None, None], torch.zeros_like(cond), cond)
        for group in optimiser.param_groups:  # a short warm-up, then cosine decay
            warm = min(1.0, (step + 1) / max(1, min(200, settings.steps // 10)))
            group["lr"] = settings.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        out = unet(x_in, t.float(), context=ctx, y=y, transformer_options=TRAINING_OPTIONS)
        weight = loss_weight(sigma.flatten(), settings.weight_bounds) / mean_weight
        loss = (weight * ((out - eps) ** 2).mean(dim=(1, 2, 3))).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        if losses is not None:
            losses.append(loss.item())
        decay = min(settings.ema, (1 + step) / (10 + step))  # warm-up: the random start fades out
        with torch.no_grad():
            for name, value in unet.state_dict().items():
                ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
        if progress is not None and (step % 200 == 0 or step == settings.steps - 1):
            progress(f"step {step + 1}/{settings.steps}: loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)")
    return {name: value.contiguous() for name, value in ema.items()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(weights: dict[str, torch.Tensor], layout: str, native: int, path: Path | None = None) -> Path:
    """Write the weights (safetensors) and their SHA-256 (``<file>.sha256``)."""
    from safetensors.torch import save_file

    path = path or weights_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: value.half() for name, value in weights.items()},
        str(path),
        metadata={"layout": layout, "native": str(native)},
    )
    path.with_suffix(path.suffix + ".sha256").write_text(sha256(path) + "\n")
    return path
