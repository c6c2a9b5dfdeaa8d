"""What every patch object of the pack shares: an effect tag and clone semantics.

ComfyUI keeps patches in ``model_options``, which ``ModelPatcher.clone`` copies (a deep
copy on 0.3.64, a copy of its lists and dicts on newer versions). Our patch objects are
immutable, so every clone shares them: a deep copy is the object itself. The effect tag
lets the pack find (and replace) its own patches among those of other nodes.
"""

from __future__ import annotations

from typing import Any

RAUNET = "hidiffusion_raunet"
MSW_MSA = "hidiffusion_msw_msa"
CONTROLNET = "hidiffusion_controlnet"
GUIDE = "hidiffusion_guide"
VIEWS = "hidiffusion_views"


class SharedPatch:
    """Base of the pack's patch objects: tagged with their effect, shared between clones."""

    hidiffusion_effect = ""

    def __deepcopy__(self, memo: dict) -> Any:
        return self


def effect_of(obj: Any) -> str | None:
    """The pack effect that registered ``obj``, or None for another node's patch."""
    return getattr(obj, "hidiffusion_effect", None) or None


def put_first(model: Any, name: str, patch: Any) -> None:
    """Register ``patch`` in the patch list ``name`` ahead of those of earlier nodes.

    For patches that stand in for what ComfyUI itself does before any patch of that
    list runs (adding ControlNet residuals).
    """
    model.set_model_patch(patch, name)
    patches = model.model_options["transformer_options"]["patches"][name]
    patches.insert(0, patches.pop())
