"""How the guided mode reads and writes one model's calls: a UNet's or a Flux transformer's.

The lock (:mod:`hidiff.diffusers.guide`) and the native views (:mod:`hidiff.diffusers.views`)
act on the call's latent as (batch, channels, height, width) and on its predicted x0. The
two kinds of model hand them over differently:

* a ``UNet2DConditionModel`` takes the latent as it is and returns epsilon, v or x0 as its
  scheduler is configured (variance-preserving x_t, ``alphas_cumprod`` at the timestep);
  the noise level is ``timestep / num_train_timesteps``.
* a ``FluxTransformer2DModel`` takes the latent packed into 2x2 patches (tokens of
  ``4·channels``, laid out by ``img_ids``) and returns the rectified-flow velocity
  ``v = noise − x0`` at ``x_t = (1 − σ)·x0 + σ·noise``; the pipeline hands it ``σ`` itself as
  the timestep (``timestep / 1000``), and ``σ`` is the noise level: the share of noise in
  the latent, read from the call, never from a step count.
* an ``SD3Transformer2DModel`` takes the latent as it is and returns the same velocity; the
  pipeline hands it the scheduler's timestep ``σ · num_train_timesteps``.

Each reader turns a call into :class:`Call` (the 4-D latent, the noise level and the
:class:`Prediction` at that level), an output back into a 4-D prediction and a 4-D
prediction into an output, and builds the arguments of a call on native-size views.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..core.native_views import repeat_per_view
from .hooks import main_tensor, replace_main, sample_and_timestep
from .position import timestep_value

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
UNET_RESIDUAL_KEYS = ("down_block_additional_residuals", "mid_block_additional_residual")
"""A ControlNet's residuals: made for the large latent, so such a call keeps it."""
FLUX_RESIDUAL_KEYS = ("controlnet_block_samples", "controlnet_single_block_samples")
SD3_RESIDUAL_KEYS = ("block_controlnet_hidden_states",)
FLUX_PER_SAMPLE_KEYS = ("encoder_hidden_states", "pooled_projections", "timestep", "guidance")
"""A Flux call's arguments with one row per sample (repeated per view); ``txt_ids`` and
``img_ids`` are per token, not per sample."""
SD3_PER_SAMPLE_KEYS = ("encoder_hidden_states", "pooled_projections", "timestep")


class Prediction(Protocol):
    """The affine maps between a model's output and x0 at one call's noisy latent."""

    def x0(self, output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor: ...
    def output_for(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor: ...
    def moved(self, output: torch.Tensor, x0_change: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class NoisePrediction:
    """A UNet's epsilon, v or x0 at the variance-preserving ``x_t`` of ``alpha_bar``."""

    alpha_bar: float
    prediction_type: str

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type {self.prediction_type!r} is not supported; valid: {', '.join(PREDICTION_TYPES)}"
            )

    def _coefficients(self) -> tuple[float, float]:
        return self.alpha_bar**0.5, (1.0 - self.alpha_bar) ** 0.5

    def x0(self, output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients()
        if self.prediction_type == "epsilon":
            return (sample - s * output) / a
        if self.prediction_type == "v_prediction":
            return a * sample - s * output
        return output

    def output_for(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients()
        if self.prediction_type == "epsilon":
            return (sample - a * x0) / s
        if self.prediction_type == "v_prediction":
            return (a * sample - x0) / s
        return x0

    def moved(self, output: torch.Tensor, x0_change: torch.Tensor) -> torch.Tensor:
        a, s = self._coefficients()
        if self.prediction_type == "epsilon":
            return output - (a / s) * x0_change
        if self.prediction_type == "v_prediction":
            return output - x0_change / s
        return output + x0_change


@dataclass(frozen=True)
class VelocityPrediction:
    """A rectified-flow velocity ``v = noise − x0`` at ``x_t = (1 − σ)·x0 + σ·noise``:
    ``x0 = x_t − σ·v``."""

    sigma: float

    def x0(self, output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return sample - self.sigma * output

    def output_for(self, x0: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return (sample - x0) / self.sigma

    def moved(self, output: torch.Tensor, x0_change: torch.Tensor) -> torch.Tensor:
        return output - x0_change / self.sigma


@dataclass
class Call:
    """One model call as the guided hooks see it."""

    latent: torch.Tensor
    """The noisy latent, (batch, channels, height, width)."""
    level: float
    """The noise level in [0, 1] (1 = pure noise)."""
    prediction: Prediction


class CallReader(Protocol):
    """Reads and writes the calls of one kind of model (see the module docstring)."""

    def read(self, args: tuple, kwargs: dict) -> Call | None: ...
    def output_latent(self, output: Any, size: tuple[int, int]) -> torch.Tensor: ...
    def with_output(self, output: Any, latent: torch.Tensor) -> Any: ...
    def views_arguments(
        self, views_in: torch.Tensor, batch: int, stride: int, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]: ...
    def views_refused(self, call: Call, stride: int, module: Any, kwargs: dict) -> tuple[str, str] | None: ...


class LatentCalls:
    """The output of a model that takes and returns the latent as it is (no patch tokens)."""

    def output_latent(self, output: Any, size: tuple[int, int]) -> torch.Tensor:
        return main_tensor(output)

    def with_output(self, output: Any, latent: torch.Tensor) -> Any:
        return replace_main(output, latent.to(main_tensor(output).dtype))


class UNetCalls(LatentCalls):
    """A ``UNet2DConditionModel``'s calls: the sample as it is, the scheduler's prediction type."""

    def __init__(self, scheduler_of: Callable[[], Any]) -> None:
        self.scheduler_of = scheduler_of

    def read(self, args: tuple, kwargs: dict) -> Call | None:
        sample, timestep = sample_and_timestep(args, kwargs)
        if timestep is None or sample.ndim != 4:
            return None
        scheduler = self.scheduler_of()
        step = timestep_value(timestep)
        prediction = NoisePrediction(alpha_bar_at(scheduler, step), scheduler.config.prediction_type)
        return Call(sample, step / scheduler.config.num_train_timesteps, prediction)

    def views_arguments(
        self, views_in: torch.Tensor, batch: int, stride: int, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """``views_in`` as the sample, every per-sample tensor (the timestep, the prompt, SDXL's
        added conditioning) repeated per view."""

        def per_view(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
                return repeat_per_view(value, stride)
            if isinstance(value, dict):
                return {key: per_view(item) for key, item in value.items()}
            return value

        views_kwargs = {key: per_view(value) for key, value in kwargs.items()}
        if args:
            return (views_in, *(per_view(value) for value in args[1:])), views_kwargs
        return (), {**views_kwargs, "sample": views_in}

    def views_refused(self, call: Call, stride: int, module: Any, kwargs: dict) -> tuple[str, str] | None:
        if any(kwargs.get(key) is not None for key in UNET_RESIDUAL_KEYS):
            return "views_controlnet", "a ControlNet guides the large calls; they run without native views"
        if call.latent.shape[1] != module.config.out_channels:
            return "views_channels", "the UNet takes concatenated channels; its calls run without native views"
        return None


class FluxCalls:
    """A ``FluxTransformer2DModel``'s calls: 2x2-patch tokens on the ``img_ids`` grid, the
    rectified-flow velocity, ``σ`` as the timestep."""

    def read(self, args: tuple, kwargs: dict) -> Call | None:
        """The call, when it is read as diffusers' Flux pipelines make it (the tokens first,
        everything else by name); else None, and the call runs as it is."""
        if len(args) > 1:
            return None
        tokens = args[0] if args else kwargs.get("hidden_states")
        timestep, ids = kwargs.get("timestep"), kwargs.get("img_ids")
        grid = token_grid(ids, tokens)
        if timestep is None or grid is None:
            return None
        sigma = timestep_value(timestep)
        if sigma <= 0.0:
            return None
        return Call(unpack(tokens, grid), min(sigma, 1.0), VelocityPrediction(sigma))

    def output_latent(self, output: Any, size: tuple[int, int]) -> torch.Tensor:
        return unpack(main_tensor(output), (size[0] // 2, size[1] // 2))

    def with_output(self, output: Any, latent: torch.Tensor) -> Any:
        return replace_main(output, pack(latent).to(main_tensor(output).dtype))

    def views_arguments(
        self, views_in: torch.Tensor, batch: int, stride: int, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """The views packed as the tokens, ``img_ids`` of the view's grid, the prompt, pooled
        projection, timestep and guidance repeated per view."""
        views_kwargs = repeated_per_view(kwargs, FLUX_PER_SAMPLE_KEYS, batch, stride)
        views_kwargs["img_ids"] = grid_ids(views_in.shape[-2] // 2, views_in.shape[-1] // 2, kwargs["img_ids"])
        tokens = pack(views_in)
        if args:
            return (tokens,), views_kwargs
        return (), {**views_kwargs, "hidden_states": tokens}

    def views_refused(self, call: Call, stride: int, module: Any, kwargs: dict) -> tuple[str, str] | None:
        if any(kwargs.get(key) is not None for key in FLUX_RESIDUAL_KEYS):
            return "views_controlnet", "a ControlNet guides the large calls; they run without native views"
        return patch_refusal(call, stride, 2)


class SD3Calls(LatentCalls):
    """An ``SD3Transformer2DModel``'s calls: the latent as it is, the rectified-flow velocity,
    ``σ · num_train_timesteps`` of the scheduler as the timestep."""

    def __init__(self, scheduler_of: Callable[[], Any], patch_size: int) -> None:
        self.scheduler_of = scheduler_of
        self.patch_size = patch_size

    def read(self, args: tuple, kwargs: dict) -> Call | None:
        """The call, when it is made as diffusers' SD3 pipelines make it (the latent first,
        everything else by name); else None, and the call runs as it is."""
        if len(args) > 1:
            return None
        latent = args[0] if args else kwargs.get("hidden_states")
        timestep = kwargs.get("timestep")
        if timestep is None or not isinstance(latent, torch.Tensor) or latent.ndim != 4:
            return None
        sigma = timestep_value(timestep) / self.scheduler_of().config.num_train_timesteps
        if sigma <= 0.0:
            return None
        return Call(latent, min(sigma, 1.0), VelocityPrediction(sigma))

    def views_arguments(
        self, views_in: torch.Tensor, batch: int, stride: int, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict]:
        """The views as the latent; the prompt, pooled projection and timestep repeated per view."""
        views_kwargs = repeated_per_view(kwargs, SD3_PER_SAMPLE_KEYS, batch, stride)
        if args:
            return (views_in,), views_kwargs
        return (), {**views_kwargs, "hidden_states": views_in}

    def views_refused(self, call: Call, stride: int, module: Any, kwargs: dict) -> tuple[str, str] | None:
        if any(kwargs.get(key) is not None for key in SD3_RESIDUAL_KEYS):
            return "views_controlnet", "a ControlNet guides the large calls; they run without native views"
        return patch_refusal(call, stride, self.patch_size)


def repeated_per_view(kwargs: dict, keys: tuple[str, ...], batch: int, stride: int) -> dict:
    """``kwargs`` with each per-sample tensor among ``keys`` repeated per view."""
    views_kwargs = dict(kwargs)
    for key in keys:
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
            views_kwargs[key] = repeat_per_view(value, stride)
    return views_kwargs


def patch_refusal(call: Call, stride: int, patch: int) -> tuple[str, str] | None:
    """Why the views of ``call`` cannot run on a DiT with ``patch`` x ``patch`` patches (a view
    side that the patch does not divide), or None."""
    height, width = -(-call.latent.shape[-2] // stride), -(-call.latent.shape[-1] // stride)
    if height % patch or width % patch:
        return "views_odd", (
            f"the native views of this size ({width}x{height} latent px) do not cut into {patch}x{patch} patches; "
            "its calls run without native views"
        )
    return None


def token_grid(ids: Any, tokens: Any) -> tuple[int, int] | None:
    """The (rows, columns) of 2x2 patches that ``img_ids`` lays ``tokens`` on, when they are the
    plain text-to-image grid (rows and columns from 0, every token once, in raster order);
    None for anything else (a reference image's tokens appended, as in Kontext)."""
    if not isinstance(ids, torch.Tensor) or not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        return None
    ids = ids[0] if ids.ndim == 3 else ids
    if ids.ndim != 2 or ids.shape[-1] != 3 or ids.shape[0] != tokens.shape[1] or tokens.shape[-1] % 4:
        return None
    rows, columns = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
    if rows * columns != ids.shape[0] or not torch.equal(ids, grid_ids(rows, columns, ids)):
        return None
    return rows, columns


def grid_ids(rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
    """The ``img_ids`` of a ``rows`` x ``columns`` patch grid, as the Flux pipelines make them."""
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3).to(device=like.device, dtype=like.dtype)


def unpack(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(batch, rows·columns, 4·channels) tokens as the (batch, channels, 2·rows, 2·columns) latent."""
    batch, _, width = tokens.shape
    rows, columns = grid
    latent = tokens.reshape(batch, rows, columns, width // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latent.reshape(batch, width // 4, 2 * rows, 2 * columns)


def pack(latent: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`unpack` (the Flux pipelines' ``_pack_latents``)."""
    batch, channels, height, width = latent.shape
    tokens = latent.reshape(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, (height // 2) * (width // 2), channels * 4)


def alpha_bar_at(scheduler: Any, timestep: float) -> float:
    """``alphas_cumprod`` at a (possibly fractional) timestep, interpolated linearly."""
    table = scheduler.alphas_cumprod
    last = len(table) - 1
    t = min(max(timestep, 0.0), float(last))
    low = int(t)
    high = min(low + 1, last)
    fraction = t - low
    return float(table[low]) * (1.0 - fraction) + float(table[high]) * fraction
