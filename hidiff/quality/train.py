"""Training the lab's models on one-subject scenes, deterministically, on a CPU.

``python -m hidiff quality train --layout sd15|sdxl`` trains from a seed and writes
``hidiff/quality/weights/lab_<layout>.safetensors`` (and its SHA-256 next to it). Every
random draw (weights, scenes, timesteps, noise, the unconditional drop) comes from
generators seeded by ``--seed``, and the run uses a fixed thread count, so the same
command gives the same file.

The objective is ComfyUI's own for an epsilon model on SD's discrete schedule: a scene
x0, a timestep t, sigma = ``model_sampling.sigmas[t]``, the UNet input
(x0 + sigma * eps) / sqrt(sigma^2 + 1) and the squared error to eps, weighted towards the
noisy steps (:attr:`TrainSettings.weight_bounds`). The DiT layouts (Flux) learn the
rectified flow ComfyUI samples them with: x_t = (1 - sigma) x0 + sigma eps at a sigma drawn
from the model's own shifted schedule, and the squared error of the output to eps - x0
(ComfyUI's CONST prediction: denoised = x_t - sigma * output). The context is the lab's one token,
replaced by zeros for 10 % of the scenes so classifier-free guidance works. The weights
are stored in float16 (half the size; the lab samples in float32).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import scenes
from .models import (
    DITS,
    adm,
    base_model,
    context,
    face_of,
    native_of,
    pytorch_attention,
    weights_path,
    with_latent_channels,
)

logger = logging.getLogger("hidiffusion.quality")
UNCOND_RATE = 0.1
BATCH = {"sdxl": 16, "sd15": 8, "flux": 16}
"""Scenes per training step. The SD1.5 layout has attention on its full-resolution level,
whose backward pass is half its step's time on this CPU (2.1 s a step of 8 scenes at
native 24, against 2.1 s for 16 scenes of the SDXL layout at native 32), so it learns
from half as many scenes per step to stay near the 45-minute budget."""


LAYOUT_DEFAULTS: dict[str, dict[str, Any]] = {"flux": {"steps": 2000, "extra_sides": (24, 48)}}
"""Settings a layout trains with unless the command names them. The Flux layout learns one
subject at three sides (24, 32, 48), as real DiTs train at several resolutions: trained at 32
alone (a pilot, 2000 steps) it drew no subject at all at 2x and 3x, where the UNet layouts and
real DiTs repeat subjects; trained at the three sides it draws one subject at 32, 2-4 at 3x."""


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
    extra_sides: tuple[int, ...] = ()
    """Other scene sides the steps cycle through after the native one (a DiT learns its
    positions only at the sides it sees; real ones train at several)."""
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


def initialise_dit(dit: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded weights for a DiT: fan-in normal matrices, norms at 1, biases at 0, and every
    modulation and the output layer at 0 (DiT's adaLN-zero), so each block starts as its
    skip path and the model's first output is 0 (denoised = the input)."""
    with torch.no_grad():
        for module in dit.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, torch.nn.LayerNorm) or name == "scale":  # RMSNorm gains
                    param.fill_(1.0 if name in ("weight", "scale") else 0.0)
                elif param.dim() > 1:
                    param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel()))
                else:
                    param.zero_()
        for module in dit.modules():
            if type(module).__name__ == "Modulation":
                module.lin.weight.zero_()
        dit.final_layer.linear.weight.zero_()
        dit.final_layer.adaLN_modulation[-1].weight.zero_()


@contextmanager
def norm_inputs_copied(net: torch.nn.Module) -> Iterator[None]:
    """Each norm layer of ``net`` gets a copy of its input while training.

    ComfyUI's Flux blocks add their residuals in place (inference code); autograd refuses
    that where a norm saved the same tensor for its backward pass. A copy at each norm's
    input leaves the saved tensor alone and computes the same values."""

    def copy_inputs(_: torch.nn.Module, args: tuple) -> tuple:
        return tuple(arg.clone() if torch.is_tensor(arg) else arg for arg in args)

    norms = [m for m in net.modules() if isinstance(m, torch.nn.LayerNorm) or type(m).__name__ == "RMSNorm"]
    hooks = [norm.register_forward_pre_hook(copy_inputs) for norm in norms]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def loss_weight(sigma: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return torch.clamp(sigma**2, *bounds)


def dataset(settings: TrainSettings, side: int | None = None, channels: int = scenes.CHANNELS) -> torch.Tensor:
    """The training scenes at ``side`` (default: the native one), one per seed (seeds offset
    by the run's seed), as latents of ``channels`` channels."""
    first = settings.seed * 1_000_003
    side = side or settings.side
    seeds = range(first, first + settings.dataset)
    return with_latent_channels(scenes.batch(seeds, side, side, face_of(settings.layout)), channels)


def train(settings: TrainSettings, progress: Any = None, losses: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Train one lab model; returns the EMA weights of its ``diffusion_model``.

    ``progress`` gets a line every 200 steps; ``losses``, if given, every step's loss.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _train(settings, progress, losses)


def dit_training_problem() -> str | None:
    """Why this ComfyUI cannot train the DiT layouts, or None. From 0.33.0 (or earlier) Flux's
    rotary embedding runs an inference-only kernel (no backward) unless ComfyUI's own training
    mode is on, and the lab does not switch ComfyUI's global modes."""
    import comfy.ldm.flux.math
    import comfy.model_management

    if getattr(comfy.model_management, "in_training", True) or not hasattr(comfy.ldm.flux.math, "_apply_rope"):
        return None
    return (
        "this ComfyUI's Flux blocks apply their rotary embedding with an inference-only kernel (no backward "
        "pass); train the Flux layout with ComfyUI 0.3.64 (scripts/setup.sh's default tree), where the "
        "committed weights were trained"
    )


def _train(settings: TrainSettings, progress: Any, losses: list[float] | None) -> dict[str, torch.Tensor]:
    if settings.layout in DITS and (problem := dit_training_problem()) is not None:
        raise RuntimeError(f"cannot train the {settings.layout} layout here: {problem}")
    torch.set_num_threads(settings.threads)
    generator = torch.Generator().manual_seed(settings.seed)
    model = base_model(settings.layout)
    net = model.diffusion_model
    dit = settings.layout in DITS
    initialise_dit(net, generator) if dit else initialise(net, generator)
    net.requires_grad_(True)  # ComfyUI builds its models for inference only
    net.train()
    sigmas = model.model_sampling.sigmas.float()
    channels = model.latent_format.latent_channels
    sides = (settings.side, *settings.extra_sides)
    datas = [dataset(settings, side, channels) for side in sides]
    ema = {name: value.detach().clone() for name, value in net.state_dict().items()}
    optimiser = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    cond = context(settings.scenes_per_step)
    mean_weight = loss_weight(sigmas, settings.weight_bounds).mean()
    y = adm(model, settings.scenes_per_step, settings.side)
    start = time.perf_counter()
    copies = norm_inputs_copied(net) if dit else nullcontext()
    with copies:
        for step in range(settings.steps):
            data = datas[step % len(datas)]
            loss = _step(settings, net, data, sigmas, cond, y, mean_weight, optimiser, generator, step, dit)
            if losses is not None:
                losses.append(loss)
            decay = min(settings.ema, (1 + step) / (10 + step))  # warm-up: the random start fades out
            with torch.no_grad():
                for name, value in net.state_dict().items():
                    ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
            if progress is not None and (step % 200 == 0 or step == settings.steps - 1):
                progress(f"step {step + 1}/{settings.steps}: loss {loss:.4f} ({time.perf_counter() - start:.0f} s)")
    return {name: value.contiguous() for name, value in ema.items()}


def _step(settings: TrainSettings, net: torch.nn.Module, data: torch.Tensor, sigmas: torch.Tensor,
          cond: torch.Tensor, y: torch.Tensor | None, mean_weight: torch.Tensor, optimiser: Any,
          generator: torch.Generator, step: int, dit: bool) -> float:  # fmt: skip
    """One optimiser step on a batch of ``data``; the random draws in a fixed order."""
    index = torch.randint(0, data.shape[0], (settings.scenes_per_step,), generator=generator)
    x0 = data[index]
    flip = torch.rand(settings.scenes_per_step, generator=generator) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    t = torch.randint(0, sigmas.shape[0], (settings.scenes_per_step,), generator=generator)
    sigma = sigmas[t][:, None, None, None]
    eps = torch.randn(x0.shape, generator=generator)
    drop = torch.rand(settings.scenes_per_step, generator=generator) < UNCOND_RATE
    ctx = torch.where(drop[:, None, None], torch.zeros_like(cond), cond)
    for group in optimiser.param_groups:  # a short warm-up, then cosine decay
        warm = min(1.0, (step + 1) / max(1, min(200, settings.steps // 10)))
        group["lr"] = settings.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * step / settings.steps))
    if dit:
        x_t = (1.0 - sigma) * x0 + sigma * eps
        out = net(x_t, sigma.flatten(), context=ctx, y=y, transformer_options=TRAINING_OPTIONS)
        loss = ((out - (eps - x0)) ** 2).mean()
    else:
        x_in = (x0 + sigma * eps) / torch.sqrt(sigma**2 + 1.0)
        out = net(x_in, t.float(), context=ctx, y=y, transformer_options=TRAINING_OPTIONS)
        weight = loss_weight(sigma.flatten(), settings.weight_bounds) / mean_weight
        loss = (weight * ((out - eps) ** 2).mean(dim=(1, 2, 3))).mean()
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimiser.step()
    return loss.item()


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
