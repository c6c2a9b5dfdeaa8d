"""The docs name what exists: the node reference is generated from the node declarations
(and is up to date), and every node id the README names is one ComfyUI registers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from hidiff.comfyui.nodes import HiDiffusionExtension

ROOT = Path(__file__).resolve().parents[2]
NODE_ID = re.compile(r"`((?:Apply|HiDiffusion)[A-Z][A-Za-z0-9]*)`")
"""A backticked id in the pack's naming (the seed's Apply..., ours HiDiffusion...)."""


def pack_ids() -> set[str]:
    import asyncio

    return {node.define_schema().node_id for node in asyncio.run(HiDiffusionExtension().get_node_list())}


def test_the_node_reference_and_the_docs_panel_pages_are_generated_from_the_declarations():
    result = subprocess.run(
        [sys.executable, "scripts/make_node_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    reference = (ROOT / "docs" / "nodes.md").read_text()
    assert all(f"(`{node_id}`)" in reference for node_id in pack_ids())


def test_every_pack_node_id_the_readme_names_is_registered_and_it_names_every_pack_node(pack):
    readme = (ROOT / "README.md").read_text()
    named = set(NODE_ID.findall(readme))
    assert named, "the README names no node id"
    assert not named - set(pack), f"not registered: {sorted(named - set(pack))}"
    assert not named - pack_ids(), f"not this pack's: {sorted(named - pack_ids())}"
    assert not pack_ids() - named, f"the README never names: {sorted(pack_ids() - named)}"
