"""The pack's node list and ComfyUI's V3 entry point."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .auto_nodes import AUTO_NODES
from .guided_nodes import GUIDED_NODES
from .msw_msa_nodes import MSW_MSA_NODES
from .raunet_nodes import RAUNET_NODES


class HiDiffusionExtension(ComfyExtension):
    """Registers the pack's nodes with ComfyUI."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*AUTO_NODES, *GUIDED_NODES, *MSW_MSA_NODES, *RAUNET_NODES]


async def comfy_entrypoint() -> HiDiffusionExtension:
    """ComfyUI's V3 entry point."""
    return HiDiffusionExtension()
