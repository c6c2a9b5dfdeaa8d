"""The example workflows (example_workflows/*.json, shown in ComfyUI's template browser)
pass ComfyUI 0.3.64's own prompt validation, cover every scenario, and are up to date.

Users open these files first, so a workflow that ComfyUI refuses ("value not in list",
a widget value read into the wrong input) is the pack's first impression. Each file is
turned into an API prompt the way the frontend does when it queues a workflow: widget
values are read by position in the order of the node's declared inputs (with the extra
value stored after a seed's control_after_generate and after an upload button), links
become [node id, output slot], and frontend-only nodes (Note) are left out. The prompt then
goes through ``execution.validate_prompt``, with placeholder files under the model and
image names the workflows use, so the names themselves are checked too.

This converter is written independently of scripts/make_example_workflows.py (which places
values by name), so a generator mistake about positions shows up as a validation error.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib.util
import inspect
import json
import sys
from pathlib import Path

import pytest
from harness import REPO_ROOT

WORKFLOW_DIR = REPO_ROOT / "example_workflows"
WORKFLOW_FILES = sorted(WORKFLOW_DIR.glob("*.json"))
OUR_NODES = {
    "ApplyHiDiffusion",
    "HiDiffusionInspect",
    "HiDiffusionHiresFix",
    "ApplyMSWMSAAttention",
    "ApplyMSWMSAAttentionSimple",
    "ApplyRAUNet",
    "ApplyRAUNetSimple",
}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")

SD15_CKPT = "v1-5-pruned-emaonly.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
FLUX_UNET = "flux1-dev.safetensors"
MODEL_FILES = {
    "checkpoints": [SD15_CKPT, SDXL_CKPT],
    "controlnet": ["control_v11p_sd15_canny.pth"],
    "diffusion_models": [FLUX_UNET],
    "text_encoders": ["clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors"],
    "vae": ["ae.safetensors"],
}
INPUT_IMAGES = ["example.png"]

SCENARIOS = {
    "sd15_2048_simple": {
        "ckpt": SD15_CKPT,
        "size": (2048, 2048),
        "nodes": {"ApplyRAUNetSimple", "ApplyMSWMSAAttentionSimple"},
    },
    "sdxl_2048_simple": {
        "ckpt": SDXL_CKPT,
        "size": (2048, 2048),
        "nodes": {"ApplyRAUNetSimple", "ApplyMSWMSAAttentionSimple"},
    },
    "sd15_controlnet_canny": {
        "ckpt": SD15_CKPT,
        "size": None,
        "nodes": {"ApplyRAUNet", "ControlNetLoader", "ControlNetApplyAdvanced"},
    },
    "sd15_advanced_nodes": {"ckpt": SD15_CKPT, "size": None, "nodes": {"ApplyRAUNet", "ApplyMSWMSAAttention"}},
    "auto_hidiffusion": {"ckpt": SD15_CKPT, "size": (2048, 2048), "nodes": {"ApplyHiDiffusion"}},
    "hires_fix_sd15_2048": {"ckpt": SD15_CKPT, "size": (512, 512), "nodes": {"HiDiffusionHiresFix", "VAEDecode"}},
    "hires_fix_sdxl_4096": {
        "ckpt": SDXL_CKPT,
        "size": (1024, 1024),
        "nodes": {"HiDiffusionHiresFix", "VAEDecodeTiled"},
    },
    "hires_fix_flux_2048": {
        "unet": FLUX_UNET,
        "size": (1024, 1024),
        "nodes": {"DualCLIPLoader", "FluxGuidance", "HiDiffusionHiresFix", "VAEDecodeTiled"},
    },
    "upscale_image_4x": {
        "ckpt": SDXL_CKPT,
        "size": None,
        "nodes": {"LoadImage", "VAEEncode", "HiDiffusionHiresFix", "VAEDecodeTiled"},
    },
}
"""The scenarios, by file name: checkpoint (or a Flux diffusion model), native latent size, nodes it must use."""
GUIDED = {"hires_fix_sd15_2048", "hires_fix_sdxl_4096", "upscale_image_4x", "hires_fix_flux_2048"}
"""The guided hires fix's workflows: the native latent, the node at scale 4 (Flux: 2, twice its 1024 px side),
a KSampler at denoise 1 after it."""

SEED_RECOMMENDED_RAUNET = {
    "input_blocks": "3",
    "output_blocks": "8",
    "time_mode": "percent",
    "start_time": 0.0,
    "end_time": 0.45,
    "ca_start_time": 0.0,
    "ca_end_time": 0.3,
    "ca_input_blocks": "4",
    "ca_output_blocks": "8",
}
SEED_RECOMMENDED_MSW_MSA = {"input_blocks": "1,2", "middle_blocks": "", "output_blocks": "9,10,11"}


@functools.cache
def load_generator():
    """scripts/make_example_workflows.py as a module (registered first: its dataclasses need it)."""
    spec = importlib.util.spec_from_file_location(
        "make_example_workflows", REPO_ROOT / "scripts" / "make_example_workflows.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry(pack) -> dict:
    """ComfyUI's node registry with the pack and the comfy_extras nodes the workflows use
    (the server loads those at start-up; a bare ``import nodes`` does not)."""
    load_generator().load_core_extras(pack)
    return pack


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Placeholder model files and an input image under the names the workflows use,
    in a temporary folder registered with ComfyUI; everything is restored afterwards."""
    import folder_paths
    from PIL import Image

    root = tmp_path_factory.mktemp("example_workflow_models")
    added = []
    for folder, names in MODEL_FILES.items():
        path = root / folder
        path.mkdir()
        for name in names:
            (path / name).write_bytes(b"")
        folder_paths.add_model_folder_path(folder, str(path))
        added.append((folder, str(path)))
        folder_paths.filename_list_cache.pop(folder, None)
    inputs = root / "input"
    inputs.mkdir()
    for name in INPUT_IMAGES:
        Image.new("RGB", (8, 8), (200, 120, 40)).save(inputs / name)
    old_input = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(inputs))
    try:
        yield root
    finally:
        folder_paths.set_input_directory(old_input)
        for folder, path in added:
            folder_paths.folder_names_and_paths[folder][0].remove(path)
            folder_paths.filename_list_cache.pop(folder, None)


# --- the frontend's conversion -----------------------------------------------------------


def is_widget(spec: tuple) -> bool:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 else {}
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")


def widget_slots(cls) -> list[str | None]:
    """What each position of ``widgets_values`` holds: an input name, or None for a value the
    frontend stores but never sends (control_after_generate, an upload button)."""
    slots: list[str | None] = []
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if not is_widget(spec):
                continue
            slots.append(name)
            options = spec[1] if len(spec) > 1 else {}
            if options.get("control_after_generate"):
                slots.append(None)
            if any(options.get(flag) for flag in UPLOAD_FLAGS):
                slots.append(None)
    return slots


def widget_inputs(cls, values: list) -> dict:
    slots = widget_slots(cls)
    assert len(values) == len(slots), f"{len(values)} widget values for the widget slots {slots}"
    return {name: value for name, value in zip(slots, values) if name is not None}


def to_prompt(workflow: dict, registry: dict) -> dict:
    """The API prompt the frontend would queue for ``workflow``."""
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}

    def source(link_id: int) -> list:
        link = links[link_id]
        origin = nodes[link[1]]
        while origin["type"] == "Reroute":
            link = links[origin["inputs"][0]["link"]]
            origin = nodes[link[1]]
        return [str(origin["id"]), link[2]]

    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in registry, f"ComfyUI has no node {node['type']}"
        assert node.get("mode", 0) == 0, f"node {node['id']} is muted or bypassed"
        inputs = widget_inputs(registry[node["type"]], node.get("widgets_values") or [])
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                inputs[socket["name"]] = source(socket["link"])
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def validate(prompt: dict) -> tuple[bool, object, dict]:
    import execution

    valid, error, _outputs, node_errors = asyncio.run(execution.validate_prompt("example-workflows", prompt, None))
    return valid, error, node_errors


def load(name: str) -> dict:
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def by_type(prompt: dict, class_type: str) -> list[dict]:
    return [node["inputs"] for node in prompt.values() if node["class_type"] == class_type]


# --- tests -------------------------------------------------------------------------------


def test_every_scenario_is_there():
    assert {path.stem for path in WORKFLOW_FILES} == set(SCENARIOS)


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.stem)
def test_workflow_passes_comfyui_validation(path: Path, registry, model_files):
    prompt = to_prompt(json.loads(path.read_text()), registry)
    valid, error, node_errors = validate(prompt)
    assert valid is True, (error, node_errors)
    assert node_errors == {}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.stem)
def test_workflow_is_well_formed(path: Path, registry):
    """Links agree on both ends, a Note explains it, our nodes are in it, and every node
    feeds an output (validation only looks at nodes an output depends on)."""
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"])
    for link_id, source, slot, target, target_slot, link_type in workflow["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[source]["outputs"][slot]["type"] == link_type == nodes[target]["inputs"][target_slot]["type"]
    assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == len(workflow["links"])
    assert [node for node in nodes.values() if node["type"] == "Note" and node["widgets_values"][0].strip()]
    assert {node["type"] for node in nodes.values()} & OUR_NODES

    prompt = to_prompt(workflow, registry)
    needed = {key for key, node in prompt.items() if getattr(registry[node["class_type"]], "OUTPUT_NODE", False)}
    stack = list(needed)
    while stack:
        for value in prompt[stack.pop()]["inputs"].values():
            if isinstance(value, list) and value[0] not in needed:
                needed.add(value[0])
                stack.append(value[0])
    assert needed == set(prompt), f"nodes no output depends on: {set(prompt) - needed}"


def own_check_failures(prompt: dict, registry: dict) -> tuple[list[str], set[str]]:
    """Our nodes' values checked directly: each choice must be one of the node's options
    (ComfyUI 0.3.64's validator compares only V1-style list combos, so a V3 node's COMBO is
    not checked at queue time), and ``validate_inputs`` (block pairs, times, YAML) must pass.
    Returns the failures and the node types whose ``validate_inputs`` ran."""
    from comfy_api.internal import first_real_override

    failures, checked = [], set()
    for key, node in prompt.items():
        if node["class_type"] not in OUR_NODES:
            continue
        cls = registry[node["class_type"]]
        declared = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        for name, value in node["inputs"].items():
            if declared[name][0] == "COMBO" and value not in declared[name][1]["options"]:
                failures.append(f"{key} {node['class_type']}.{name}: {value!r} is not an option")
        check = first_real_override(cls, "validate_inputs")
        if check is not None:
            parameters = inspect.signature(check).parameters
            result = check(**{name: value for name, value in node["inputs"].items() if name in parameters})
            checked.add(node["class_type"])
            if result is not True:
                failures.append(f"{key} {node['class_type']}: {result}")
    return failures, checked


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.stem)
def test_our_widget_values_pass_their_own_checks(path: Path, registry):
    prompt = to_prompt(json.loads(path.read_text()), registry)
    failures, checked = own_check_failures(prompt, registry)
    assert failures == []
    with_checks = {
        "ApplyRAUNet",
        "ApplyMSWMSAAttention",
        "ApplyHiDiffusion",
        "ApplyRAUNetSimple",
        "ApplyMSWMSAAttentionSimple",
        "HiDiffusionHiresFix",
    }
    assert checked == with_checks & {node["class_type"] for node in prompt.values()}


def test_our_checks_catch_a_choice_comfyui_lets_through(registry, model_files):
    workflow = copy.deepcopy(load("sd15_2048_simple"))
    (node,) = [node for node in workflow["nodes"] if node["type"] == "ApplyRAUNetSimple"]
    node["widgets_values"][widget_slots(registry["ApplyRAUNetSimple"]).index("res_mode")] = "medium"
    prompt = to_prompt(workflow, registry)
    failures, _ = own_check_failures(prompt, registry)
    assert failures[0] == f"{node['id']} ApplyRAUNetSimple.res_mode: 'medium' is not an option"
    # the node's own queue-time check reports it too (ComfyUI's validator would not)
    assert failures[1].startswith(f"{node['id']} ApplyRAUNetSimple: res_mode = 'medium' is not valid; use one of")
    assert len(failures) == 2


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_content(name: str, registry):
    scenario = SCENARIOS[name]
    prompt = to_prompt(load(name), registry)
    types = {node["class_type"] for node in prompt.values()}
    assert scenario["nodes"] <= types
    flux = "unet" in scenario
    if flux:
        assert [inputs["unet_name"] for inputs in by_type(prompt, "UNETLoader")] == [scenario["unet"]]
        assert [inputs["type"] for inputs in by_type(prompt, "DualCLIPLoader")] == ["flux"]
    else:
        assert [inputs["ckpt_name"] for inputs in by_type(prompt, "CheckpointLoaderSimple")] == [scenario["ckpt"]]
    if scenario["size"]:
        (latent,) = by_type(prompt, "EmptySD3LatentImage" if flux else "EmptyLatentImage")
        assert (latent["width"], latent["height"]) == scenario["size"]
    samplers = by_type(prompt, "KSampler")
    sampler = next(s for s in samplers if prompt[s["model"][0]]["class_type"] in OUR_NODES)
    # the UNet guided workflows' large pass: 10 steps (the lab's native-views runs kept the structure of 20);
    # Flux's: its first pass's 20 (no lab run on a DiT yet)
    assert sampler["steps"] == 10 if name in GUIDED and not flux else 20 <= sampler["steps"] <= 30
    assert sampler["cfg"] == (1.0 if flux else 6.0 if scenario["ckpt"] == SDXL_CKPT else 7.0)
    assert prompt[sampler["model"][0]]["class_type"] in OUR_NODES
    if name in GUIDED:
        (hires,) = by_type(prompt, "HiDiffusionHiresFix")
        assert hires["scale_by"] == (2.0 if flux else 4.0) and sampler["denoise"] == 1.0
        assert prompt[sampler["latent_image"][0]]["class_type"] == "HiDiffusionHiresFix"
        first = prompt[hires["latent"][0]]["class_type"]
        assert first == ("VAEEncode" if name == "upscale_image_4x" else "KSampler")
        assert len(samplers) == (1 if name == "upscale_image_4x" else 2)
    if name == "sd15_advanced_nodes":
        (raunet,) = by_type(prompt, "ApplyRAUNet")
        (msw,) = by_type(prompt, "ApplyMSWMSAAttention")
        assert {k: raunet[k] for k in SEED_RECOMMENDED_RAUNET} == SEED_RECOMMENDED_RAUNET
        assert {k: msw[k] for k in SEED_RECOMMENDED_MSW_MSA} == SEED_RECOMMENDED_MSW_MSA
    if name == "sd15_controlnet_canny":
        (apply,) = by_type(prompt, "ControlNetApplyAdvanced")
        assert prompt[sampler["positive"][0]]["class_type"] == "ControlNetApplyAdvanced"
        assert prompt[apply["control_net"][0]]["class_type"] == "ControlNetLoader"


BROKEN = [
    ("sd15_advanced_nodes", "ApplyRAUNet", "input_blocks", "3,x", "custom_validation_failed"),
    ("sd15_advanced_nodes", "ApplyMSWMSAAttention", "time_mode", "seconds", "custom_validation_failed"),
    ("sd15_controlnet_canny", "ApplyRAUNet", "upscale_mode", "sharp", "custom_validation_failed"),
    ("sd15_controlnet_canny", "ControlNetApplyAdvanced", "strength", 20.0, "value_bigger_than_max"),
    ("sd15_controlnet_canny", "LoadImage", "image", "missing.png", "custom_validation_failed"),
    ("auto_hidiffusion", "ApplyHiDiffusion", "advanced", "speed: fast", "custom_validation_failed"),
    ("sdxl_2048_simple", "CheckpointLoaderSimple", "ckpt_name", "missing.safetensors", "value_not_in_list"),
]


@pytest.mark.parametrize(("name", "class_type", "input_name", "bad", "error_type"), BROKEN)
def test_a_broken_copy_is_reported_invalid(name, class_type, input_name, bad, error_type, registry, model_files):
    """The check can fail: one wrong widget value in a copy is a validation error on that node.
    (``valid`` alone is not enough: ComfyUI calls a prompt valid when any one output is.)"""
    workflow = copy.deepcopy(load(name))
    (node,) = [node for node in workflow["nodes"] if node["type"] == class_type]
    node["widgets_values"][widget_slots(registry[class_type]).index(input_name)] = bad
    _valid, _error, node_errors = validate(to_prompt(workflow, registry))
    assert str(node["id"]) in node_errors
    assert error_type in {error["type"] for error in node_errors[str(node["id"])]["errors"]}


def test_a_shifted_widget_list_is_caught(registry):
    """Dropping the KSampler's control_after_generate value (the classic hand-written
    mistake) shifts every later widget; the conversion refuses the count."""
    workflow = copy.deepcopy(load("sd15_2048_simple"))
    (sampler,) = [node for node in workflow["nodes"] if node["type"] == "KSampler"]
    sampler["widgets_values"].remove("fixed")
    with pytest.raises(AssertionError, match="widget values"):
        to_prompt(workflow, registry)


def without_unlinked_outputs(text: str) -> dict:
    """A workflow with the outputs nothing links to left out of every node. The files are made
    on the oldest supported ComfyUI; newer versions give some nodes more outputs (SaveImage has
    an IMAGE output on 0.33.0), which the frontend adds from the node's definition on load."""
    workflow = json.loads(text)
    for node in workflow["nodes"]:
        node["outputs"] = [out for out in node.get("outputs", []) if out.get("links")]
    return workflow


def test_files_are_up_to_date_with_the_generator(registry):
    rendered = load_generator().render_all(registry)
    assert set(rendered) == {path.name for path in WORKFLOW_FILES}
    stale = [
        name
        for name, text in rendered.items()
        if without_unlinked_outputs((WORKFLOW_DIR / name).read_text()) != without_unlinked_outputs(text)
    ]
    assert not stale, f"out of date (run python scripts/make_example_workflows.py): {stale}"


def test_readme_lists_every_workflow():
    readme = (WORKFLOW_DIR / "README.md").read_text()
    for path in WORKFLOW_FILES:
        assert f"`{path.name}`" in readme
