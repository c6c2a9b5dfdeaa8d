"""HiDiffusion for ComfyUI: this folder is the node pack ComfyUI loads from custom_nodes.

It registers the V3 nodes and nothing else; the implementation lives in ``hidiff``.
Outside ComfyUI (tools that import the folder as a package, such as pytest), there is
nothing to register and the torch-only core stays importable on its own.
"""

import importlib.util

if importlib.util.find_spec("comfy_api") is not None:
    from .hidiff.comfyui.nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
