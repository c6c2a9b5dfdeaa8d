"""Training the lab's models on one-subject scenes, deterministically, on a CPU.

``python -m hidiff quality train --layout sd15|sdxl`` trains from a seed and writes
``hidiff/quality/weights/lab_<layout>.safetensors`` (and its SHA-256 next to it). Every
random draw (weights, scenes, timesteps, noise, the unconditional drop) comes from
generators seeded by ``--seed``, and the run uses a fixed thread count, so the same
command gives the same file.

The objective is ComfyUI's own for an epsilon model on SD's discrete schedule: a scene
x0, a timestep t, sigma = ``model_sampling.sigmas[t]``, the UNet input
(x0 + sigma * eps) / sqrt(sigma^2 + 1) and the MSE to eps. The context is the lab's one
token, replaced by zeros for 10 % of the scenes so classifier-free guidance works.
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
from .models import NATIVE, adm, base_model, context, weights_path

logger = logging.getLogger("hidiffusion.quality")
UNCOND_RATE = 0.1


def _pytorch_attention(func: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    import comfy.ldm.modules.attention

    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


TRAINING_OPTIONS = {"optimized_attention_override": _pytorch_attention}
"""Training runs attention through PyTorch's SDPA (ComfyUI's official per-call override):
on a CPU its backward is several times faster than the sub-quadratic kernel ComfyUI picks
there for inference. Sampling in the lab uses whatever ComfyUI picks, as users get."""


@dataclass(frozen=True)
class TrainSettings:
    layout: str
    native: int = NATIVE
    steps: int = 6000
    batch: int = 32
    learning_rate: float = 4e-4
    seed: int = 0
    dataset: int = 8192
    ema: float = 0.999
    threads: int = 2


def initialise(unet: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded weights: fan-in normal for matrices and kernels, norms at 1, biases at 0.

    ComfyUI builds its layers without initialising them (its loaders overwrite every
    weight), so the lab initialises them itself. The last conv starts at 0, so the model
    starts by predicting no noise, as the ldm code intends.
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
        last = unet.out[-1]
        last.weight.zero_()
        last.bias.zero_()


def dataset(settings: TrainSettings) -> torch.Tensor:
    """The training scenes, one per seed (seeds offset by the run's seed)."""
    first = settings.seed * 1_000_003
    return scenes.batch(range(first, first + settings.dataset), settings.native, settings.native)


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
    cond = context(settings.batch)
    y = adm(model, settings.batch, settings.native)
    start = time.perf_counter()
    for step in range(settings.steps):
        index = torch.randint(0, data.shape[0], (settings.batch,), generator=generator)
        x0 = data[index]
        flip = torch.rand(settings.batch, generator=generator) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(0, sigmas.shape[0], (settings.batch,), generator=generator)
        sigma = sigmas[t][:, None, None, None]
        eps = torch.randn(x0.shape, generator=generator)
        x_in = (x0 + sigma * eps) / torch.sqrt(sigma**2 + 1.0)
        drop = torch.rand(settings.batch, generator=generator) < UNCOND_RATE
        ctx = torch.where(drop[:, None, None], torch.zeros_like(cond), cond)
        for group in optimiser.param_groups:  # a short warm-up, then cosine decay
            warm = min(1.0, (step + 1) / max(1, min(200, settings.steps // 10)))
            group["lr"] = settings.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
        out = unet(x_in, t.float(), context=ctx, y=y, transformer_options=TRAINING_OPTIONS)
        loss = torch.nn.functional.mse_loss(out, eps)
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


def save(weights: dict[str, torch.Tensor], layout: str, path: Path | None = None) -> Path:
    """Write the weights (safetensors) and their SHA-256 (``<file>.sha256``)."""
    from safetensors.torch import save_file

    path = path or weights_path(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path), metadata={"layout": layout, "native": str(NATIVE)})
    path.with_suffix(path.suffix + ".sha256").write_text(sha256(path) + "\n")
    return path
