"""The pack's pyproject.toml read by ComfyUI's own copy of the Registry's parser (comfy_config,
kept in step with comfy-cli's), so a field the Registry would drop or misread shows here."""

from __future__ import annotations

import tomllib
from harness import REPO_ROOT


def test_comfyuis_registry_parser_reads_every_field():
    from comfy_config import config_parser

    expected = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    config = config_parser.extract_node_configuration(str(REPO_ROOT))
    project, comfy = config.project, config.tool_comfy
    assert (project.name, project.version) == (expected["project"]["name"], expected["project"]["version"])
    assert project.license.file == "LICENSE"
    assert project.urls.repository == expected["project"]["urls"]["Repository"]
    assert project.supported_comfyui_version == ">=0.3.64"
    assert project.supported_os == ["OS Independent"]
    assert project.supported_accelerators == ["GPU :: NVIDIA CUDA"]
    assert (comfy.publisher_id, comfy.display_name) == ("hidiffusion-nodes", "HiDiffusion")
    assert comfy.icon == expected["tool"]["comfy"]["Icon"] and comfy.web == "web"
