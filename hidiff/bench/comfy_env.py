"""ComfyUI in a standalone process (the benchmark, the tests): finding it, importing it, loading the pack.

ComfyUI is found at ``$COMFYUI_PATH``, else ``~/comfy/ComfyUI`` (comfy-cli's default
place). The pack is loaded with ComfyUI's own custom-node loader and its nodes are taken
from ComfyUI's node registry, so callers get exactly what a user's workflow gets.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
"""The folder a user clones into ``ComfyUI/custom_nodes/``."""


class ComfyUINotFoundError(RuntimeError):
    """ComfyUI is not where we look for it."""


def comfyui_path() -> Path:
    """Where ComfyUI is looked for."""
    return Path(os.environ.get("COMFYUI_PATH") or "~/comfy/ComfyUI").expanduser().resolve()


def comfyui_available() -> bool:
    root = comfyui_path()
    return (root / "comfy" / "model_patcher.py").is_file() and (root / "nodes.py").is_file()


def import_comfyui(*, cpu: bool) -> None:
    """Put ComfyUI on ``sys.path`` and import it, on the CPU when ``cpu`` or when torch sees no accelerator.

    ComfyUI's device choice is made once, when ``comfy.model_management`` is first
    imported; a second call cannot change it (the first caller's choice stands).
    """
    if not comfyui_available():
        raise ComfyUINotFoundError(
            f"ComfyUI not found at {comfyui_path()}: run `bash scripts/setup.sh`, or set COMFYUI_PATH "
            "to a ComfyUI 0.3.64 checkout."
        )
    root = str(comfyui_path())
    if root not in sys.path:
        sys.path.insert(0, root)
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args
        import comfy.options  # noqa: F401  (must come first: it owns args_parsing)

        if cpu or not _accelerator_present():
            # As if ComfyUI had been started with --cpu, through its own argument parser.
            comfy.cli_args.parser.parse_args(["--cpu"], namespace=comfy.cli_args.args)
    import comfy.model_management  # noqa: F401
    import nodes  # noqa: F401


def _accelerator_present() -> bool:
    """Whether torch sees a device ComfyUI would use instead of the CPU."""
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


_PACK: dict | None = None


def load_pack() -> dict:
    """Load this pack with ComfyUI's custom-node loader; return ComfyUI's node registry."""
    global _PACK
    if _PACK is None:
        import nodes

        ok = asyncio.run(nodes.load_custom_node(str(PACK_ROOT), ignore=set(), module_parent="custom_nodes"))
        if not ok:
            raise RuntimeError("ComfyUI could not load the pack; see the log above")
        _PACK = nodes.NODE_CLASS_MAPPINGS
    return _PACK
