"""Write the ComfyUI node docs (web/docs/<node_id>.md) from the README's node sections.

The README is the one source; ComfyUI's documentation panel shows these files. Run
``python scripts/make_node_docs.py`` after editing the README; ``--check`` exits 1 when a
file is out of date (the test suite runs it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "web" / "docs"
NODES = {
    "ApplyHiDiffusion": "HiDiffusion (`ApplyHiDiffusion`)",
    "HiDiffusionInspect": "HiDiffusion Inspect (`HiDiffusionInspect`)",
    "HiDiffusionHiresFix": "HiDiffusion Hires Fix (`HiDiffusionHiresFix`)",
    "ApplyMSWMSAAttention": "ApplyMSWMSAAttention",
    "ApplyMSWMSAAttentionSimple": "ApplyMSWMSAAttentionSimple",
    "ApplyRAUNet": "ApplyRAUNet",
    "ApplyRAUNetSimple": "ApplyRAUNetSimple",
}
WITH_COMMON_INPUTS = {"ApplyMSWMSAAttention", "ApplyRAUNet"}


def section(readme: str, heading: str) -> str:
    """The body of the ``### heading`` section, up to the next heading of level 2 or 3."""
    match = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^##+ |\Z)", readme, re.MULTILINE | re.DOTALL)
    if match is None:
        raise SystemExit(f"README has no section '### {heading}'")
    return match.group(1).strip()


def common_inputs(readme: str) -> str:
    """The README's shared description of the time inputs and yaml_parameters."""
    start = readme.index("**Time inputs**")
    return readme[start : readme.index("\n### ", start)].strip()


def render(readme: str, node_id: str) -> str:
    body = section(readme, NODES[node_id])
    parts = [f"# {NODES[node_id].split(' (')[0]}", "", body]
    if node_id in WITH_COMMON_INPUTS:
        parts += ["", "## Common inputs", "", common_inputs(readme)]
    parts += ["", "More: the pack's README.", ""]
    return "\n".join(parts)


def main(check: bool) -> int:
    readme = (ROOT / "README.md").read_text()
    stale = []
    DOCS.mkdir(parents=True, exist_ok=True)
    for node_id in NODES:
        path = DOCS / f"{node_id}.md"
        text = render(readme, node_id)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    if stale:
        sys.stderr.write(f"out of date (run python scripts/make_node_docs.py): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
