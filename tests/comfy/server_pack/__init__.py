"""Test-only node pack for the server end-to-end test: a tiny model and conditioning.

ComfyUI loads it from a temporary custom_nodes folder next to the real pack, so a
prompt can run EmptyLatentImage -> our nodes -> KSampler without any checkpoint (and
ControlNetApplyAdvanced with a tiny ControlNet).
"""

import sys
from pathlib import Path

from comfy_api.latest import ComfyExtension, io

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import conditioning, tiny_controlnet, tiny_model  # noqa: E402


class TestTinyUNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestTinyUNet",
            category="testing",
            inputs=[io.Combo.Input("family", options=["sd15", "sdxl"])],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, family: str) -> io.NodeOutput:
        return io.NodeOutput(tiny_model(family))


class TestFakeConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestFakeConditioning",
            category="testing",
            inputs=[io.Combo.Input("family", options=["sd15", "sdxl"]), io.Int.Input("seed", default=0)],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, family: str, seed: int) -> io.NodeOutput:
        return io.NodeOutput(conditioning(family, seed=seed))


class TestTinyControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestTinyControlNet",
            category="testing",
            inputs=[io.Combo.Input("family", options=["sd15"])],
            outputs=[io.ControlNet.Output()],
        )

    @classmethod
    def execute(cls, family: str) -> io.NodeOutput:
        return io.NodeOutput(tiny_controlnet(family))


TEST_NODES = [TestTinyUNet, TestFakeConditioning, TestTinyControlNet]


class TestExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return TEST_NODES


async def comfy_entrypoint() -> TestExtension:
    return TestExtension()
