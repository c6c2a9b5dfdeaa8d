"""The node docs ComfyUI shows (web/docs) match the README sections they come from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_node_docs_are_up_to_date():
    result = subprocess.run(
        [sys.executable, "scripts/make_node_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_node_has_a_doc_and_the_pack_declares_the_web_folder():
    names = {p.stem for p in (ROOT / "web" / "docs").glob("*.md")}
    assert names == {
        "ApplyHiDiffusion",
        "HiDiffusionInspect",
        "HiDiffusionHiresFix",
        "ApplyMSWMSAAttention",
        "ApplyMSWMSAAttentionSimple",
        "ApplyRAUNet",
        "ApplyRAUNetSimple",
    }
    assert 'web = "web"' in (ROOT / "pyproject.toml").read_text()
