"""End to end through the real ComfyUI server: the pack loads from custom_nodes, its nodes
are in /object_info with tooltips, a prompt using them runs, and bad input comes back as a
validation error in node_errors instead of a crash."""

from __future__ import annotations

import uuid

import pytest
from comfy_server import http, running_server, wait_for_history


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("comfy_base")) as running:
        yield running


def prompt(input_blocks: str = "1,2") -> dict:
    return {
        "1": {"class_type": "TestTinyUNet", "inputs": {"family": "sd15"}},
        "2": {
            "class_type": "ApplyMSWMSAAttention",
            "inputs": {
                "model": ["1", 0],
                "input_blocks": input_blocks,
                "middle_blocks": "",
                "output_blocks": "9,10,11",
                "time_mode": "percent",
                "start_time": 0.0,
                "end_time": 1.0,
            },
        },
        "3": {"class_type": "ApplyMSWMSAAttentionSimple", "inputs": {"model_type": "auto", "model": ["2", 0]}},
        "4": {"class_type": "TestFakeConditioning", "inputs": {"family": "sd15", "seed": 1}},
        "5": {"class_type": "TestFakeConditioning", "inputs": {"family": "sd15", "seed": 2}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 200, "height": 136, "batch_size": 1}},
        "7": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["3", 0],
                "seed": 3,
                "steps": 2,
                "cfg": 5.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["4", 0],
                "negative": ["5", 0],
                "latent_image": ["6", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "e2e"}},
    }


def test_nodes_are_served_with_tooltips(server):
    url = server.url
    _, core = http(f"{url}/object_info/PatchModelAddDownscale")
    deep_shrink = core["PatchModelAddDownscale"]["category"]  # next to core's Deep Shrink in every version
    assert deep_shrink in ("model_patches/unet", "model/patch/unet")
    for node_id in ("ApplyMSWMSAAttention", "ApplyMSWMSAAttentionSimple"):
        status, info = http(f"{url}/object_info/{node_id}")
        assert status == 200 and node_id in info
        required = info[node_id]["input"]["required"]
        assert all(spec[1].get("tooltip") for spec in required.values())
        assert info[node_id]["category"] == deep_shrink


def test_prompt_runs_to_success(server):
    url = server.url
    status, reply = http(f"{url}/prompt", {"prompt": prompt(), "client_id": str(uuid.uuid4())})
    assert status == 200 and not reply.get("node_errors"), reply
    entry = wait_for_history(server, reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert list((server.base / "output").glob("e2e*.latent"))
    log = server.log
    assert "ApplyMSWMSAAttentionSimple: Using preset SD15" in log
    assert "IMPORT FAILED" not in log.split("Import times for custom nodes:")[-1].split("\n\n")[0]


def test_bad_input_is_a_validation_error_not_a_crash(server):
    url = server.url
    status, reply = http(f"{url}/prompt", {"prompt": prompt(input_blocks="3,x"), "client_id": str(uuid.uuid4())})
    assert status == 400
    errors = reply["node_errors"]["2"]["errors"]
    assert any("input_blocks = '3,x' contains 'x'" in e["details"] for e in errors)
    status, _ = http(f"{url}/object_info/KSampler")
    assert status == 200  # the server is still up
