"""Test-only node pack for the server and browser end-to-end tests: a tiny model and conditioning.

ComfyUI loads it from a temporary custom_nodes folder next to the real pack, so a
prompt can run EmptyLatentImage -> our nodes -> KSampler without any checkpoint (and
ControlNetApplyAdvanced with a tiny ControlNet). ``TestTinyCheckpoint`` stands in for
CheckpointLoaderSimple in a copy of an example workflow: the same three outputs, so the
workflow's CLIPTextEncode, VAEDecode and SaveImage nodes run unchanged.
"""

import sys
import zlib
from pathlib import Path

import torch
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


class StandInClip:
    """What CLIPTextEncode calls on a CLIP: random text embeddings of the tiny model's width,
    seeded by the text, so the same prompt gives the same conditioning."""

    def __init__(self, family: str) -> None:
        self.family = family

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, text: str) -> list:
        return conditioning(self.family, seed=zlib.crc32(text.encode()))


class StandInVae:
    """What VAEDecode calls on a VAE: the latent's first three channels as colours, 8x larger."""

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        rgb = torch.sigmoid(latent[:, :3].float())
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1)


class TestTinyCheckpoint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TestTinyCheckpoint",
            category="testing",
            inputs=[io.Combo.Input("family", options=["sd15", "sdxl"])],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, family: str) -> io.NodeOutput:
        return io.NodeOutput(tiny_model(family), StandInClip(family), StandInVae())


TEST_NODES = [TestTinyUNet, TestFakeConditioning, TestTinyControlNet, TestTinyCheckpoint]


class TestExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return TEST_NODES


async def comfy_entrypoint() -> TestExtension:
    return TestExtension()
