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


def _ksampler(model: str, latent: list, denoise: float) -> dict:
    return {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "seed": 3,
            "steps": 3,
            "cfg": 5.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": ["4", 0],
            "negative": ["5", 0],
            "latent_image": latent,
            "denoise": denoise,
        },
    }


def _saved(server, prefix: str):
    from safetensors.torch import load_file

    (path,) = list((server.base / "output").glob(f"{prefix}_*.latent"))
    return load_file(str(path))["latent_tensor"]


def hires_fix_prompt(model_node: dict) -> dict:
    """A hires fix wired the usual way: one patched model (``model_node``, on node 1) feeds
    both KSamplers; the first pass at the native size, then Upscale Latent By 3 and a second
    pass at 0.5 denoise. Node 9 samples the first pass with the unpatched model."""
    return {
        "1": {"class_type": "TestTinyUNet", "inputs": {"family": "sd15"}},
        "2": model_node,
        "4": {"class_type": "TestFakeConditioning", "inputs": {"family": "sd15", "seed": 1}},
        "5": {"class_type": "TestFakeConditioning", "inputs": {"family": "sd15", "seed": 2}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 128, "batch_size": 1}},
        "7": _ksampler(["2", 0], ["6", 0], 1.0),
        "8": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["7", 0], "upscale_method": "nearest-exact", "scale_by": 3.0},
        },
        "10": _ksampler(["2", 0], ["8", 0], 0.5),
        "9": _ksampler(["1", 0], ["6", 0], 1.0),
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": "hires_first"}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["9", 0], "filename_prefix": "hires_unpatched"}},
        "13": {"class_type": "SaveLatent", "inputs": {"samples": ["10", 0], "filename_prefix": "hires_second"}},
    }


def test_hires_fix_with_one_patched_model_keeps_the_first_pass(server):
    """The auto node set up for the hires fix's target (3x a 128 px native size) feeds both
    KSamplers: its native-size first pass equals the unpatched one bit for bit (the gate holds
    per call), and the second pass at 3x runs patched."""
    auto = {
        "class_type": "ApplyHiDiffusion",
        "inputs": {
            "model": ["1", 0],
            "width": 384,
            "height": 384,
            "raunet": True,
            "msw_msa": True,
            "advanced": "native_resolution: 128",
        },
    }
    status, reply = http(f"{server.url}/prompt", {"prompt": hires_fix_prompt(auto), "client_id": str(uuid.uuid4())})
    assert status == 200 and not reply.get("node_errors"), reply
    entry = wait_for_history(server, reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    first, unpatched, second = (_saved(server, p) for p in ("hires_first", "hires_unpatched", "hires_second"))
    assert first.shape[-2:] == (16, 16) and second.shape[-2:] == (48, 48)
    assert first.equal(unpatched)
    assert server.log.count("runs exactly as the unpatched model") == 1, "told once, for the first pass"
