"""End to end through the real ComfyUI server: the pack loads from custom_nodes, its nodes
are in /object_info with tooltips, a prompt using them runs, and bad input comes back as a
validation error in node_errors instead of a crash."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from harness import REPO_ROOT, comfyui_path

SERVER_PACK = Path(__file__).parent / "server_pack"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, payload: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "hidiffusion").symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "custom_nodes" / "hidiffusion_test_pack").symlink_to(SERVER_PACK, target_is_directory=True)
    frontend = base / "frontend"
    frontend.mkdir()
    (frontend / "index.html").write_text("<html></html>")
    port = free_port()
    log = open(base / "server.log", "w")  # noqa: SIM115 (closed in teardown)
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--front-end-root", str(frontend), "--disable-api-nodes"],
        cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if http(f"{url}/object_info/KSampler", timeout=5)[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            pytest.fail(f"ComfyUI server did not start:\n{(base / 'server.log').read_text()[-4000:]}")
        time.sleep(1)
    yield url, base
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


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
    url, _ = server
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
    url, base = server
    status, reply = http(f"{url}/prompt", {"prompt": prompt(), "client_id": str(uuid.uuid4())})
    assert status == 200 and not reply.get("node_errors"), reply
    prompt_id = reply["prompt_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        _, history = http(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        time.sleep(1)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert list((base / "output").glob("e2e*.latent"))
    log = (base / "server.log").read_text()
    assert "ApplyMSWMSAAttentionSimple: Using preset SD15" in log
    assert "IMPORT FAILED" not in log.split("Import times for custom nodes:")[-1].split("\n\n")[0]


def test_bad_input_is_a_validation_error_not_a_crash(server):
    url, _ = server
    status, reply = http(f"{url}/prompt", {"prompt": prompt(input_blocks="3,x"), "client_id": str(uuid.uuid4())})
    assert status == 400
    errors = reply["node_errors"]["2"]["errors"]
    assert any("input_blocks = '3,x' contains 'x'" in e["details"] for e in errors)
    status, _ = http(f"{url}/object_info/KSampler")
    assert status == 200  # the server is still up
