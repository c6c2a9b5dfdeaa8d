"""API prompts run in the test process through ComfyUI's own validation and PromptExecutor,
the way the server runs a queued prompt, with test-only nodes at the edges of the graph:
models and conditioning the test built go in, and latents and recordings come out.

For the tests with third-party packs: their nodes run exactly as ComfyUI calls them (node
classes from the registry, inputs by name, V1 and V3 alike), next to ours.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from typing import Any

PROVIDED: dict[str, Any] = {}
"""What the Test* input nodes hand to the graph, by key."""
KEPT: dict[str, Any] = {}
"""What TestKeepLatent took from the graph, by key."""


class TestProvideModel:
    """A MODEL the test built (``PROVIDED[key]``)."""

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "provide"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {"required": {"key": ("STRING", {"default": ""})}}

    def provide(self, key: str):
        return (PROVIDED[key],)


class TestProvideConditioning(TestProvideModel):
    """A CONDITIONING the test built (``PROVIDED[key]``)."""

    RETURN_TYPES = ("CONDITIONING",)


class TestApply:
    """``PROVIDED[key](model)``: a test's own change to the model at this point of the graph
    (recorders that see every patch before them)."""

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"model": ("MODEL",), "key": ("STRING", {"default": ""})}}

    def apply(self, model: Any, key: str):
        return (PROVIDED[key](model),)


class TestKeepLatent:
    """An output node that keeps the latent it gets in ``KEPT[key]``."""

    RETURN_TYPES = ()
    FUNCTION = "keep"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802
        return {"required": {"samples": ("LATENT",), "key": ("STRING", {"default": ""})}}

    def keep(self, samples: dict, key: str):
        KEPT[key] = samples["samples"]
        return {}


TEST_NODES = {cls.__name__: cls for cls in (TestProvideModel, TestProvideConditioning, TestApply, TestKeepLatent)}


class _Server:
    """What PromptExecutor needs of the server: messages go to a list."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))

    def queue_updated(self) -> None:
        pass


def register_test_nodes() -> None:
    import nodes

    for name, cls in TEST_NODES.items():
        nodes.NODE_CLASS_MAPPINGS.setdefault(name, cls)


def chain_prompt(model_nodes: list[tuple[str, dict]], sampler: tuple[str, dict], height: int, width: int) -> dict:
    """model -> each of ``model_nodes`` in order -> ``sampler`` -> TestKeepLatent("out").

    The model and the two conditionings come from ``PROVIDED["model"]``, ``["positive"]`` and
    ``["negative"]``; the latent is an EmptyLatentImage of height x width latent pixels.
    """
    prompt = {"1": {"class_type": "TestProvideModel", "inputs": {"key": "model"}}}
    last = "1"
    for class_type, inputs in model_nodes:
        node_id = str(len(prompt) + 1)
        prompt[node_id] = {"class_type": class_type, "inputs": {**inputs, "model": [last, 0]}}
        last = node_id
    prompt["p"] = {"class_type": "TestProvideConditioning", "inputs": {"key": "positive"}}
    prompt["n"] = {"class_type": "TestProvideConditioning", "inputs": {"key": "negative"}}
    prompt["l"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": width * 8, "height": height * 8, "batch_size": 1},
    }
    class_type, inputs = sampler
    links = {"model": [last, 0], "positive": ["p", 0], "negative": ["n", 0], "latent_image": ["l", 0]}
    prompt["s"] = {"class_type": class_type, "inputs": {**inputs, **links}}
    prompt["k"] = {"class_type": "TestKeepLatent", "inputs": {"samples": ["s", 0], "key": "out"}}
    return prompt


def _classic_cache(executor_class: Any) -> dict:
    """The keyword arguments main.py passes for ``--cache-classic``: newer versions (0.33.0)
    also read RAM headroom figures from ``cache_args``."""
    if "cache_args" in inspect.signature(executor_class).parameters:
        return {"cache_args": {"lru": 0, "ram": 0.0, "ram_inactive": 0.0}}
    return {}


def run_prompt(prompt: dict) -> None:
    """Validate ``prompt`` as the server does, then execute it; raise with ComfyUI's own
    messages if either fails."""
    import execution

    register_test_nodes()
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise AssertionError(f"ComfyUI refused the prompt: {error} {node_errors}")
    server = _Server()
    executor = execution.PromptExecutor(server, **_classic_cache(execution.PromptExecutor))
    executor.execute(prompt, prompt_id, {}, outputs)
    if not executor.success:
        errors = [data for event, data in server.messages if event == "execution_error"]
        raise AssertionError(f"the prompt failed: {errors or executor.status_messages}")
