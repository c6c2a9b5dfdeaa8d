"""Runs in its own process for test_bleh_comfy.py: ComfyUI with this pack and the real
ComfyUI-bleh, both loaded by ComfyUI's custom-node loader (ours first, the harder order:
our module exists before bleh does). Prints one JSON object of findings on its last line.

A process of its own because loading bleh changes the test process for good: it adds
sampler presets to ComfyUI's sampler list, reloads ``comfy.k_diffusion.sampling`` and
publishes itself in ``sys.modules``, so every later test would see its methods.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from harness import (  # noqa: E402
    REPO_ROOT,
    bleh_folder,
    import_comfyui,
    load_pack,
    load_third_party,
    pack_module,
    placed_values,
    sample,
    tiny_model,
)

SEED_WORKFLOW = REPO_ROOT / "tests" / "data" / "seed_workflows" / "sd15_workflow.json"
SEED_CHECKPOINT = "sd15/v1-5-pruned-emaonly.ckpt"
RANDOM_MODES = {"upscale_mode": "random+renoise1", "ca_upscale_mode": "random"}
"""The seed README's suggestions for bleh users, as a workflow saved with them stores them."""
LATENT = (40, 56)
REFERENCE_MODE = "revcosinterp"
"""A bleh-only method (one that ``random`` picks from) for the per-call reference."""


def options_of(node_cls, name: str) -> list[str]:
    spec = {**node_cls.INPUT_TYPES()["required"], **node_cls.INPUT_TYPES().get("optional", {})}[name]
    return list(spec[1]["options"]) if isinstance(spec[0], str) else list(spec[0])


def method_lists(nodes: dict) -> dict:
    full, simple = nodes["ApplyRAUNet"], nodes["ApplyRAUNetSimple"]
    lists = {
        name: options_of(full, name)
        for name in ("upscale_mode", "ca_upscale_mode", "two_stage_upscale_mode", "ca_downscale_mode")
    }
    lists["simple_upscale_mode"] = options_of(simple, "upscale_mode")
    return lists


def sizes_of_every_method(lists: dict) -> dict:
    """Every offered method, run by our resampler, must reach the exact size it is asked for."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample

    raunet = pack_module("hidiff.comfyui.raunet")
    resampling = pack_module("hidiff.comfyui.resampling")
    core = pack_module("hidiff.core.raunet")
    wrong = {}
    small = torch.randn(1, 4, 10, 14, generator=torch.Generator().manual_seed(1))
    for mode in lists["upscale_mode"]:
        rau = raunet.ResolutionAwareUpsample([8], mode, "disabled")
        try:
            out = rau.resample(Upsample(4, False), small, (1, 4, 37, 53), {})
            if tuple(out.shape[-2:]) != (37, 53):
                wrong[f"upscale {mode}"] = list(out.shape[-2:])
        except Exception as error:  # noqa: BLE001 (reported to the test)
            wrong[f"upscale {mode}"] = repr(error)
    big = torch.randn(1, 4, 37, 53, generator=torch.Generator().manual_seed(2))
    for mode in lists["ca_downscale_mode"]:
        try:
            out = core.ca_downscale(big, 2.0, 3.0, mode, resampling.CallResampler({}, raunet.EFFECT))
            if tuple(out.shape[-2:]) != (19, 18):
                wrong[f"downscale {mode}"] = list(out.shape[-2:])
        except Exception as error:  # noqa: BLE001
            wrong[f"downscale {mode}"] = repr(error)
    return wrong


def bleh_method_against_bleh(mode: str = REFERENCE_MODE) -> dict:
    """RAU with a bleh method is bleh's scale_samples, then the layer's own conv."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample

    raunet = pack_module("hidiff.comfyui.raunet")
    utils = pack_module("hidiff.comfyui.resampling").bleh().py.latent_utils
    layer = Upsample(4, True, dims=2, out_channels=4)  # ComfyUI's layers leave their weights uninitialised
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    x = torch.randn(2, 4, 10, 14, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = raunet.ResolutionAwareUpsample([8], mode, "disabled").resample(layer, x, (2, 4, 37, 53), {})
        reference = layer.conv(utils.scale_samples(x, 53, 37, mode=mode))
        bicubic = raunet.ResolutionAwareUpsample([8], "bicubic", "disabled").resample(layer, x, (2, 4, 37, 53), {})
    return {
        "error": float((ours - reference).abs().max()),
        "reference_to_bicubic": float((reference - bicubic).abs().max()),
    }


def with_defaults(node: dict, node_cls, workflows) -> None:
    """Fill the widgets a saved workflow has no value for with their defaults, as the frontend
    does (our nodes added the optional yaml_parameters after the seed's inputs)."""
    placed = placed_values(node_cls)
    values = node["widgets_values"]
    values.extend(placed[name] for name in workflows.widget_slots(node_cls)[len(values) :])


def seed_workflow_with_random_modes(registry: dict) -> dict:
    """The seed's SD1.5 workflow saved with bleh's random modes, through ComfyUI's validation."""
    import folder_paths
    import test_example_workflows as workflows

    workflow = json.loads(SEED_WORKFLOW.read_text())
    for node in workflow["nodes"]:
        if node["type"] in registry and node.get("widgets_values") is not None:
            with_defaults(node, registry[node["type"]], workflows)
    node = next(n for n in workflow["nodes"] if n["type"] == "ApplyRAUNet")
    names = workflows.widget_slots(registry["ApplyRAUNet"])
    for name, mode in RANDOM_MODES.items():
        node["widgets_values"][names.index(name)] = mode
    with tempfile.TemporaryDirectory() as root:
        checkpoint = Path(root) / SEED_CHECKPOINT
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"")
        folder_paths.add_model_folder_path("checkpoints", root)
        folder_paths.filename_list_cache.pop("checkpoints", None)
        prompt = workflows.to_prompt(workflow, registry)
        valid, error, node_errors = workflows.validate(prompt)
    inputs = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ApplyRAUNet")
    return {
        "valid": bool(valid),
        "error": repr(error) if not valid else None,
        "nodes": repr(node_errors),
        "inputs": inputs,
    }


def run(nodes: dict, inputs: dict, global_seed: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ApplyRAUNet with the workflow's inputs on a tiny SD1.5, then sampling from a global RNG
    seeded with ``global_seed``. Returns the latent and the global RNG state afterwards."""
    settings = {k: v for k, v in inputs.items() if not isinstance(v, list)}  # links are not settings
    patched = nodes["ApplyRAUNet"].execute(tiny_model("sd15"), **settings).result[0]
    torch.manual_seed(global_seed)
    latent = sample(patched, "sd15", *LATENT, seed=seed, steps=4)
    return latent, torch.get_rng_state()


def sampling(nodes: dict, inputs: dict) -> dict:
    """ComfyUI's own sampling moves the global RNG, so the state after a run with bleh's random
    modes is compared with the state after the same run with bicubic."""
    bicubic_inputs = {**inputs, **dict.fromkeys(RANDOM_MODES, "bicubic")}
    first, state = run(nodes, inputs, global_seed=123)
    bicubic, bicubic_state = run(nodes, bicubic_inputs, global_seed=123)
    again, _ = run(nodes, inputs, global_seed=98765)
    other_seed, _ = run(nodes, inputs, global_seed=123, seed=1)
    other_seed_bicubic, _ = run(nodes, bicubic_inputs, global_seed=123, seed=1)
    return {
        "finite": bool(torch.isfinite(first).all()),
        "global_rng_as_with_bicubic": bool(torch.equal(state, bicubic_state)),
        "same_with_another_global_state": float((first - again).abs().max()),
        "random_to_bicubic": float((first - bicubic).abs().max()),
        "seed1_random_to_bicubic": float((other_seed - other_seed_bicubic).abs().max()),
    }


def main() -> None:
    import_comfyui()
    load_pack()
    findings: dict = {"bleh_before": pack_module("hidiff.comfyui.resampling").bleh() is not None}
    nodes = load_third_party(bleh_folder())
    findings["bleh_after"] = pack_module("hidiff.comfyui.resampling").bleh() is not None
    __import__("test_example_workflows").load_generator().load_core_extras(nodes)
    registry = nodes
    findings["lists"] = method_lists(nodes)
    findings["wrong_sizes"] = sizes_of_every_method(findings["lists"])
    findings["reference"] = bleh_method_against_bleh()
    findings["workflow"] = seed_workflow_with_random_modes(registry)
    findings["sampling"] = sampling(nodes, findings["workflow"]["inputs"])
    sys.stdout.write(json.dumps(findings) + "\n")


if __name__ == "__main__":
    main()
