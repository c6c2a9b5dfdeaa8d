"""Write the node reference from the node declarations and the hand-written notes.

Two sources, so that the reference cannot drift from the nodes:

* each node's schema as ComfyUI reads it (inputs with their types, defaults, ranges,
  options and tooltips; outputs) and the keys its YAML input accepts (``yaml_keys()``);
* ``docs/node-notes.md``: per node, what it is for and how it works (``## <node_id>``
  sections; the text before the first one is the part every node shares).

They give ``docs/nodes.md`` (every node) and ``web/docs/<node_id>.md`` (ComfyUI's docs
panel, one node each). ComfyUI must be importable (``$COMFYUI_PATH``, as for the tests).
Run ``python scripts/make_node_docs.py`` after changing a node or the notes; ``--check``
exits 1 when a file is out of date (the ComfyUI test tier runs it).
"""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "docs" / "node-notes.md"
REFERENCE = ROOT / "docs" / "nodes.md"
WEB_DOCS = ROOT / "web" / "docs"
SHARED_INPUT = "time_mode"
"""Nodes with this input get the shared notes (time inputs, yaml_parameters) on their panel page."""


def node_classes() -> list[Any]:
    """The pack's nodes, in the order ComfyUI registers them."""
    sys.path.insert(0, str(ROOT))
    from hidiff.bench import comfy_env

    comfy_env.import_comfyui(cpu=True)
    from hidiff.comfyui.nodes import HiDiffusionExtension

    return asyncio.run(HiDiffusionExtension().get_node_list())


def split_notes(text: str) -> tuple[str, dict[str, str]]:
    """The shared part and each node's section of the notes."""
    parts = re.split(r"^## (\S+)\n", text, flags=re.MULTILINE)
    shared = parts[0].strip()
    return shared, {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _default(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value}`" if str(value) != "" else "(empty)"


def _values(widget: Any) -> str:
    """The valid values a widget declares: its options or its range."""
    options = getattr(widget, "options", None)
    if options:
        return ", ".join(f"`{option}`" for option in options)
    low, high = getattr(widget, "min", None), getattr(widget, "max", None)
    if low is not None and high is not None:
        return f"{low:g} to {high:g}"
    return ""


def inputs_table(schema: Any) -> str:
    lines = ["| input | type | default | values | meaning |", "|---|---|---|---|---|"]
    for widget in schema.inputs:
        name = f"`{widget.id}`" + (" (optional)" if widget.optional else "")
        cells = [name, widget.get_io_type(), _default(getattr(widget, "default", None)), _values(widget)]
        lines.append("| " + " | ".join(_cell(c) for c in [*cells, widget.tooltip or ""]) + " |")
    return "\n".join(lines)


def outputs_table(schema: Any) -> str:
    lines = ["| output | meaning |", "|---|---|"]
    lines += [f"| {_cell(out.get_io_type())} | {_cell(out.tooltip or '')} |" for out in schema.outputs]
    return "\n".join(lines)


def keys_table(node: Any, schema: Any) -> str:
    """The YAML-only keys (a settings node's YAML also overrides every input by name)."""
    names = {widget.id for widget in schema.inputs}
    keys = {key: doc for key, doc in node.yaml_keys().items() if key not in names}
    if not keys:
        return ""
    yaml_input = next(widget.id for widget in schema.inputs if widget.get_io_type() == "STRING" and widget.multiline)
    overrides = " (it also sets any input above by name)" if set(node.yaml_keys()) & names else ""
    lines = [f"Keys of `{yaml_input}`{overrides}:", "", "| key | meaning |", "|---|---|"]
    lines += [f"| `{key}` | {_cell(doc)} |" for key, doc in keys.items()]
    return "\n".join(lines)


def _anchor(node: Any) -> str:
    """GitHub's anchor of the node's heading in docs/nodes.md."""
    heading = f"{node.display_name} ({node.node_id})".lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def node_page(node: Any, notes: str, shared: str | None, level: int) -> str:
    """One node: the notes, then what the declarations say. ``level`` is the heading depth; the
    panel's page (level 1) is titled as the node is, the reference names the id too."""
    schema = node.define_schema()
    head = "#" * level
    title = schema.display_name if level == 1 else f"{schema.display_name} (`{schema.node_id}`)"
    parts = [f"{head} {title}", "", notes, "", f"{head}# Inputs", ""]
    parts += [inputs_table(schema), ""]
    keys = keys_table(node, schema)
    if keys:
        parts += [keys, ""]
    parts += [f"{head}# Outputs", "", outputs_table(schema), ""]
    if shared:
        parts += [f"{head}# Common inputs", "", shared, ""]
    return "\n".join(parts)


def render(nodes: list[Any], notes_text: str) -> dict[Path, str]:
    """Every generated file and its text."""
    shared, notes = split_notes(notes_text)
    missing = [node.node_id for node in nodes if node.node_id not in notes]
    if missing:
        raise SystemExit(f"{NOTES.relative_to(ROOT)} has no section for {', '.join(missing)}")
    header = (
        "<!-- Generated by scripts/make_node_docs.py from the node declarations and docs/node-notes.md; "
        "do not edit. -->\n"
    )
    footer = "More: the pack's docs/nodes.md.\n\n" + header
    contents = " · ".join(f"[{node.display_name}](#{_anchor(node)})" for node in nodes)
    reference = [header, "# Nodes", "", contents, "", shared, ""]
    files: dict[Path, str] = {}
    for node in nodes:
        reference.append(node_page(node, notes[node.node_id], None, 2))
        has_shared = any(widget.id == SHARED_INPUT for widget in node.define_schema().inputs)
        panel = node_page(node, notes[node.node_id], shared if has_shared else None, 1)
        files[WEB_DOCS / f"{node.node_id}.md"] = panel + "\n" + footer
    files[REFERENCE] = "\n".join(reference)
    return files


def main(check: bool) -> int:
    files = render(node_classes(), NOTES.read_text())
    stale = []
    for path, text in files.items():
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        sys.stderr.write(f"out of date (run python scripts/make_node_docs.py): {', '.join(stale)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv[1:]))
