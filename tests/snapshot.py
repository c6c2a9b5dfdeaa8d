"""Whole-state snapshots: everything a node or an adapter call could touch, in one comparable value.

A node gets a model and must return a clone; the model it got, and every random generator
in the process, must come out exactly as they went in. Comparing ``repr(model_options)``
misses most of what a node could change (a wrapper added to a shared dict, a callback
list extended in place, an attachment, a weight patch, a weight edited through the shared
module, a draw from ``random``). :func:`of_patcher` and :func:`of_module` fingerprint
all of it:

* containers (dicts, lists, tuples, sets) are walked, so an entry added in place shows;
* tensors by identity, shape and their in-place version counter, so an edit shows;
* objects by identity, and the pack's own objects (patches, handlers) also by their
  attributes, so run state left in a patch after a run shows;
* the weights by a SHA-256 of every parameter and buffer;
* RNG: torch's CPU generator (and CUDA's, where present), ``random`` and numpy's.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PACK_MODULE_MARK = "hidiff"
"""Objects whose class lives in a module with this in its name are the pack's own."""
PATCHER_FIELDS = (
    "model_options",
    "object_patches",
    "patches",
    "weight_wrapper_patches",
    "attachments",
    "additional_models",
    "callbacks",
    "wrappers",
    "injections",
    "hook_patches",
    "cached_hook_patches",
    "forced_hooks",
    "current_hooks",
    "hook_mode",
    "load_device",
    "offload_device",
    "parent",
    "weight_inplace_update",
    "is_injected",
    "skip_injection",
)
"""Every ModelPatcher field a node could set (those this ComfyUI has): the patcher's own
configuration, not the state ComfyUI changes on its own: the backups of patched weights and
objects (set when a model is loaded, cleared when it is not) and the cached model size
(``size``, which ``clone()`` computes and stores on the original on 0.33.0)."""


def fingerprint(value: Any, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
    """A comparable, hashable summary of ``value`` that changes when anything in it changes."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), tuple(value.shape), value.dtype, value._version)
    if id(value) in seen or depth > 12:
        return ("seen", id(value))
    inner = seen | {id(value)}
    if isinstance(value, dict):
        items = [(repr(key), fingerprint(item, depth + 1, inner)) for key, item in value.items()]
        return ("dict", id(value), tuple(items))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, id(value), tuple(fingerprint(item, depth + 1, inner) for item in value))
    if isinstance(value, (set, frozenset)):
        return ("set", id(value), tuple(sorted(repr(item) for item in value)))
    if isinstance(value, torch.nn.Module):
        return ("module", id(value))  # its weights are hashed separately
    identity = (type(value).__qualname__, id(value))
    if PACK_MODULE_MARK in (type(value).__module__ or "") and hasattr(value, "__dict__"):
        return identity + (fingerprint(vars(value), depth + 1, inner),)
    if hasattr(value, "__self__") and hasattr(value, "__func__"):  # a bound method: its object
        return identity + (fingerprint(value.__self__, depth + 1, inner),)
    return identity


def weights_digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict(keep_vars=True).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> tuple:
    """Every process-wide generator's state."""
    numpy_state = np.random.get_state()
    cuda = (
        tuple(state.numpy().tobytes() for state in torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else ()
    )
    return (
        torch.get_rng_state().numpy().tobytes(),
        cuda,
        random.getstate(),
        (numpy_state[0], numpy_state[1].tobytes(), *numpy_state[2:]),
    )


@dataclass(frozen=True)
class Snapshot:
    fields: tuple
    weights: str
    rng: tuple

    def differences(self, other: Snapshot) -> list[str]:
        """What changed, by name (empty when nothing did); the RNG only where both hold it."""
        changed = [name for (name, mine), (_, theirs) in zip(self.fields, other.fields) if mine != theirs]
        if self.weights != other.weights:
            changed.append("weights")
        if self.rng and other.rng and self.rng != other.rng:
            changed.append("rng")
        return changed


def of_patcher(patcher: Any, *, rng: bool = True) -> Snapshot:
    """A ComfyUI ModelPatcher's whole configuration, its weights and (``rng``) the RNG state."""
    fields = tuple((name, fingerprint(getattr(patcher, name))) for name in PATCHER_FIELDS if hasattr(patcher, name))
    return Snapshot(fields, weights_digest(patcher.model), rng_state() if rng else ())


def of_module(module: torch.nn.Module, *, rng: bool = True) -> Snapshot:
    """A torch module tree's hooks, attention processors, attributes and weights (diffusers)."""
    fields = []
    for name, sub in module.named_modules():
        own = tuple(
            (key, fingerprint(value))
            for key, value in vars(sub).items()
            if key not in ("_parameters", "_buffers", "_modules")
        )
        fields.append((name or "<root>", own))
    return Snapshot(tuple(fields), weights_digest(module), rng_state() if rng else ())
