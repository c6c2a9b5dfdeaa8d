"""The real ComfyUI server in a subprocess, for the tests that talk to it over HTTP or drive
it with a browser: this pack and the test-only pack in a temporary ``custom_nodes``, on
127.0.0.1, on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT, comfyui_path

SERVER_PACK = Path(__file__).parent / "server_pack"
PACK_FOLDER = "hidiffusion"
"""The folder name this pack has in ``custom_nodes`` (its web files are served under /extensions/<it>/)."""


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


@dataclass(frozen=True)
class Server:
    url: str
    base: Path
    """ComfyUI's --base-directory: custom_nodes, output, user and the server log live here."""

    @property
    def log(self) -> str:
        return (self.base / "server.log").read_text()


@contextlib.contextmanager
def running_server(base: Path, front_end_root: Path | None = None, start_timeout: float = 240) -> Iterator[Server]:
    """Start ComfyUI with this pack and the test pack; stop it on exit.

    Without ``front_end_root`` the server gets an empty page as its frontend (HTTP-only tests).
    """
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_FOLDER).symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "custom_nodes" / "hidiffusion_test_pack").symlink_to(SERVER_PACK, target_is_directory=True)
    if front_end_root is None:
        front_end_root = base / "frontend"
        front_end_root.mkdir()
        (front_end_root / "index.html").write_text("<html></html>")
    port = free_port()
    log = open(base / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--front-end-root", str(front_end_root), "--disable-api-nodes"],
        cwd=comfyui_path(), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", base)
    try:
        _wait_until_up(server, process, start_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_until_up(server: Server, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http(f"{server.url}/object_info/KSampler", timeout=5)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ComfyUI server did not start:\n{server.log[-4000:]}")
        time.sleep(1)


def wait_for_history(server: Server, prompt_id: str, timeout: float = 240) -> dict:
    """The history entry of a queued prompt once it completed (or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, history = http(f"{server.url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return history[prompt_id]
        time.sleep(1)
    raise TimeoutError(f"prompt {prompt_id} did not complete in {timeout} s")
