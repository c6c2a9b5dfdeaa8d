"""HiDiffusion for ComfyUI: this folder is the node pack ComfyUI loads from custom_nodes.

It registers the V3 nodes and their docs pages, nothing else; the implementation lives in
``hidiff``. Outside ComfyUI (tools that import the folder as a package, such as pytest),
there is nothing to register and the torch-only core stays importable on its own.
"""

import importlib.util

WEB_DIRECTORY = "./web"
"""The node docs (web/docs/<node id>.md). The frontend asks for them under
/extensions/<this folder's name>/; ComfyUI serves pyproject's ``web`` folder only under the
project name, which is this folder's name only when it was cloned or installed under it."""

if importlib.util.find_spec("comfy_api") is not None:
    from .hidiff.comfyui.nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
