"""What the Comfy Registry needs from the pack: its metadata, its archive, its publishing.

The rules are the Registry's (docs.comfy.org/registry/specifications, and comfy-cli's
validation that ComfyUI mirrors in ``comfy_config``); the archive is what comfy-cli packs:
the git-tracked files minus ``.comfyignore``. The ComfyUI tier also parses the file with
ComfyUI's own ``comfy_config`` where the running version has it.
"""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT, COMFY = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
OLDEST_COMFYUI = "0.3.64"
VALID_OS = {"Microsoft", "POSIX", "MacOS", "OS Independent"}
VALID_ACCELERATORS = {
    "GPU :: NVIDIA CUDA",
    "GPU :: AMD ROCm",
    "GPU :: Intel Arc",
    "NPU :: Huawei Ascend",
    "GPU :: Apple Metal",
}
RUNTIME_FILES = (
    "__init__.py",
    "pyproject.toml",
    "LICENSE",
    "README.md",
    "hidiff/comfyui/nodes.py",
    "hidiff/core/plan.py",
)
ARCHIVE_LIMIT = 5_000_000
"""Bytes the whole archive may hold: the nodes, their docs and a few images."""


def test_the_node_id_follows_the_registry_rules():
    name = PROJECT["name"]
    assert len(name) < 100
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name), name
    assert not re.search(r"[._-]{2}", name), "no consecutive special characters"
    assert "comfyui" not in name.lower(), "the Registry asks not to put ComfyUI in the id"


def test_the_version_is_semantic_and_is_the_changelogs_top_entry():
    version = PROJECT["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    headings = [line for line in (ROOT / "CHANGELOG.md").read_text().splitlines() if line.startswith("## ")]
    assert headings and headings[0].split()[1] == version, headings[:1]


def test_project_fields_the_registry_shows():
    assert PROJECT["description"].strip()
    assert (ROOT / PROJECT["license"]["file"]).is_file()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", PROJECT["urls"]["Repository"])
    assert not [d for d in PROJECT["dependencies"] if d.startswith(("torch", "comfyui-frontend-package"))]
    classifiers = PROJECT["classifiers"]
    systems = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment :: ")]
    assert systems and set(systems) <= VALID_OS, systems
    assert accelerators and set(accelerators) <= VALID_ACCELERATORS, accelerators


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_tool_comfy_is_complete():
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", COMFY["PublisherId"])
    assert COMFY["DisplayName"].strip()
    assert COMFY["requires-comfyui"] == f">={OLDEST_COMFYUI}"
    assert (ROOT / COMFY["web"] / "docs").is_dir()
    assert COMFY["includes"] == []  # everything shipped is tracked by git; nothing is built
    prefix = (
        PROJECT["urls"]["Repository"].replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    )
    assert COMFY["Icon"].startswith(prefix), COMFY["Icon"]
    icon = ROOT / COMFY["Icon"].removeprefix(prefix)
    width, height = png_size(icon)
    assert width == height <= 400, (width, height)


def ignored_prefixes() -> list[str]:
    lines = [line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    # Folders only, so this test reads them exactly as comfy-cli's gitignore matching does.
    assert all(p.endswith("/") and "*" not in p and not p.startswith("!") for p in patterns), patterns
    return patterns


def archive() -> dict[str, int]:
    """{path: bytes} of what comfy-cli would pack: tracked files minus .comfyignore."""
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"the archive test needs the git checkout: {exc}")
    prefixes = ignored_prefixes()
    return {
        path: (ROOT / path).stat().st_size
        for path in tracked
        if path and not any(path.startswith(p) for p in prefixes) and (ROOT / path).is_file()
    }


def test_the_registry_archive_holds_the_nodes_and_leaves_out_tests_and_large_files():
    files = archive()
    assert not [p for p in files if p.startswith("tests/")]
    assert all(name in files for name in RUNTIME_FILES), [n for n in RUNTIME_FILES if n not in files]
    docs = [f"web/docs/{page.name}" for page in (ROOT / "web" / "docs").glob("*.md")]
    assert len(docs) == 7 and all(page in files for page in docs)
    large = {p: size for p, size in files.items() if size > 1_000_000}
    assert not large, large
    assert sum(files.values()) < ARCHIVE_LIMIT, sum(files.values())
    everything = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert len(everything) > len(files), ".comfyignore leaves nothing out"


def test_a_version_bump_on_main_publishes_with_the_registrys_action():
    workflow = (ROOT / ".github" / "workflows" / "publish.yml").read_text()
    assert re.search(r"branches:\s*\n\s*- main", workflow)
    assert re.search(r"paths:\s*\n\s*- \"pyproject\.toml\"", workflow)
    assert "uses: Comfy-Org/publish-node-action@v1" in workflow
    assert "personal_access_token: ${{ secrets.REGISTRY_ACCESS_TOKEN }}" in workflow
