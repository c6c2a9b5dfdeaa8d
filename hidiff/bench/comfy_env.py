"""ComfyUI in a standalone process (the benchmark, the tests): finding it, importing it, loading the pack.

ComfyUI is found at ``$COMFYUI_PATH``, else ``~/comfy/ComfyUI`` (comfy-cli's default
place). The pack is loaded with ComfyUI's own custom-node loader and its nodes are taken
from ComfyUI's node registry, so callers get exactly what a user's workflow gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

PACK_ROOT = Path(__file__).resolve().parents[2]
"""The folder a user clones into ``ComfyUI/custom_nodes/``."""


class ComfyUINotFoundError(RuntimeError):
    """ComfyUI is not where we look for it."""


def comfyui_path() -> Path:
    """Where ComfyUI is looked for."""
    return Path(os.environ.get("COMFYUI_PATH") or "~/comfy/ComfyUI").expanduser().resolve()


def comfyui_version() -> str | None:
    """The version of the ComfyUI tree in use, read from its ``comfyui_version.py``."""
    path = comfyui_path() / "comfyui_version.py"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


def comfyui_available() -> bool:
    root = comfyui_path()
    return (root / "comfy" / "model_patcher.py").is_file() and (root / "nodes.py").is_file()


def import_comfyui(*, cpu: bool, args: tuple[str, ...] = ()) -> None:
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
    dynamic = False
    if "comfy.model_management" not in sys.modules:
        import comfy.cli_args
        import comfy.options  # noqa: F401  (must come first: it owns args_parsing)

        if cpu or not _accelerator_present():
            # As if ComfyUI had been started with --cpu (and ``args``), through its own argument parser.
            comfy.cli_args.parser.parse_args(["--cpu", *args], namespace=comfy.cli_args.args)
        else:
            if args:
                comfy.cli_args.parser.parse_args(list(args), namespace=comfy.cli_args.args)
            dynamic = _start_aimdo()
    import comfy.model_management  # noqa: F401

    # main.py imports ComfyUI's ``utils`` package before ``nodes`` puts comfy/ first on
    # sys.path, where comfy/utils.py would shadow it for ``server`` and the packs that import it.
    with contextlib.suppress(ImportError):
        import utils.extra_config  # noqa: F401
    import nodes  # noqa: F401

    if dynamic:
        _enable_dynamic_vram()


def _start_aimdo() -> bool:
    """The first half of main.py's dynamic-VRAM start (ComfyUI 0.33.0 ``main.py:96-108``).

    ComfyUI versions with comfy-aimdo load models through ``ModelPatcherDynamic`` by
    default on NVIDIA GPUs; ``main.py`` sets that up before anything imports the model
    code. The bench imports ComfyUI without ``main.py``, so it repeats those steps to
    measure the loader users run. Returns whether the second half should follow.
    """
    import comfy.cli_args

    enables = getattr(comfy.cli_args, "enables_dynamic_vram", None)
    if enables is None or not enables():
        return False
    try:
        import comfy_aimdo.control
    except ImportError:
        return False
    args = comfy.cli_args.args
    reserve = getattr(args, "reserve_vram", None)
    headroom = None if reserve is None else int(reserve * 1024**3)
    for kwargs in (
        {"simple_vram_headroom": headroom, "nvml_pressure": not getattr(args, "disable_nvml_pressure", False)},
        {"simple_vram_headroom": headroom},
        {},
    ):  # newest comfy-aimdo protocol first, as main.py tries them
        try:
            comfy_aimdo.control.init(**kwargs)
            return True
        except TypeError:
            continue
    return False


def _enable_dynamic_vram() -> None:
    """The second half (ComfyUI 0.33.0 ``main.py:291-331``): dynamic VRAM on a supported GPU.

    These are ComfyUI's own start-up assignments, made here only because the bench is the
    process's ``main``; the pack itself never assigns ComfyUI's globals.
    """
    import comfy.cli_args
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy_aimdo.control

    supported = mm.is_nvidia() or (mm.is_amd() and getattr(mm, "rocm_version", (0, 0)) >= (7, 14))
    if not supported or getattr(mm, "torch_version_numeric", (0, 0)) < (2, 8):
        return
    headroom = int(getattr(comfy.cli_args.args, "vram_headroom", 0) * 1024**3)
    devices = mm.get_all_torch_devices()
    try:
        started = comfy_aimdo.control.init_devices((d.index, headroom) for d in devices)
    except TypeError:
        started = comfy_aimdo.control.init_devices(d.index for d in devices)
    if started:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True


def model_loader() -> str:
    """The ModelPatcher class ComfyUI's loaders use in this process (dynamic VRAM or the legacy one)."""
    import comfy.model_patcher

    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher).__name__


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


def placed_values(node: Any) -> dict[str, Any]:
    """The widget values of a freshly placed node, as the frontend fills them in: each input's
    default, else a dropdown's first option. Inputs without a widget (links such as the model)
    are left out. Reads the V1 input types, so V1 and V3 nodes are read alike."""
    values: dict[str, Any] = {}
    types = node.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            extra = spec[1] if len(spec) > 1 else {}
            options = spec[0] if isinstance(spec[0], list) else extra.get("options")
            if "default" in extra:
                values[name] = extra["default"]
            elif options:
                values[name] = options[0]
    return values
