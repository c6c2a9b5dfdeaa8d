"""HiDiffusion for ComfyUI: this folder is the node pack ComfyUI loads from custom_nodes.

It registers the V3 nodes and nothing else; the implementation lives in ``hidiff``.
"""

from .hidiff.comfyui.nodes import comfy_entrypoint

__all__ = ["comfy_entrypoint"]
