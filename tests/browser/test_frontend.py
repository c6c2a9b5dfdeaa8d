"""The pack as users meet it: the real ComfyUI server with the frontend its release pins, in
headless Chromium.

Each test checks one thing a user sees: the node library lists our six nodes in their
category; the node search finds the auto node (and by an alias where ComfyUI has search
aliases); a placed node shows its widgets with their tooltips; the docs panel renders our
``web/docs`` page; every example workflow loads with no missing node and no invalid widget
value; the auto-node workflow, queued with the test pack's tiny checkpoint, ends with an
image on its SaveImage node. No test may leave a console error, page error or failed
request that points at this pack. Screenshots go to ``$HIDIFF_SCREENSHOTS`` (default: the
test's temporary folder); docs/images holds the ones of a run on the newest tested ComfyUI.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from comfy_page import ComfyPage
from comfy_server import http
from harness import REPO_ROOT, comfyui_version

OUR_NODES = {
    "ApplyHiDiffusion": "HiDiffusion",
    "HiDiffusionInspect": "HiDiffusion Inspect",
    "HiDiffusionHiresFix": "HiDiffusion Hires Fix",
    "ApplyRAUNet": "Apply RAU-Net (HiDiffusion)",
    "ApplyRAUNetSimple": "Apply RAU-Net Simple (HiDiffusion)",
    "ApplyMSWMSAAttention": "Apply MSW-MSA Attention (HiDiffusion)",
    "ApplyMSWMSAAttentionSimple": "Apply MSW-MSA Attention Simple (HiDiffusion)",
}
EXAMPLES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


def version_tuple(version: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in (version or "0").split(".") if part.isdigit())


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    folder = os.environ.get("HIDIFF_SCREENSHOTS")
    return Path(folder).resolve() if folder else tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def comfy(browser, server):
    """A fresh tab on the app with an empty graph; fails the test on a problem caused by our pack."""
    page = ComfyPage(browser, server).open()
    page.clear_graph()
    yield page
    ours = page.problems.ours()
    page.page.close()
    assert not ours, "browser problems caused by this pack:\n" + "\n".join(ours)


def test_our_nodes_are_registered_with_their_display_names(server, comfy):
    """The frontend knows every node of ours, under the name the server gives it."""
    info = {node: http(f"{server.url}/object_info/{node}")[1][node] for node in OUR_NODES}
    registered = comfy.evaluate(
        "ids => ids.map(id => LiteGraph.registered_node_types[id]?.title ?? null)", list(OUR_NODES)
    )
    assert registered == [info[node]["display_name"] for node in OUR_NODES] == list(OUR_NODES.values())


def test_the_node_library_lists_our_nodes_in_their_category(server, comfy, screenshots):
    """Sidebar > Node Library, then the category folders one by one, as a user opens them."""
    category = http(f"{server.url}/object_info/ApplyHiDiffusion")[1]["ApplyHiDiffusion"]["category"]
    comfy.open_node_library()
    trees = comfy.open_library_path(category.split("/"), set(OUR_NODES.values()))
    comfy.screenshot(screenshots / "node-library.png")
    assert any(set(OUR_NODES.values()) <= set(shown) for shown in trees), trees


def test_the_node_search_finds_the_auto_node(comfy, screenshots):
    results = comfy.search_nodes("hidiffusion")
    comfy.screenshot(screenshots / "node-search.png")
    assert results[0] == "HiDiffusion", results


ALIAS = "highres"
"""One of ApplyHiDiffusion's search aliases that its name, display name and category do not match."""


def test_the_node_search_finds_the_auto_node_by_an_alias_where_comfyui_has_aliases(comfy):
    results = comfy.search_nodes(ALIAS)
    if version_tuple(comfyui_version()) >= (0, 11, 0):
        assert "HiDiffusion" in results, results
    else:
        # no search aliases in this ComfyUI: the same words find nothing of ours, so the check above is the alias's
        assert not set(OUR_NODES.values()) & set(results), results


def test_a_placed_node_shows_its_widgets_with_tooltips(server, comfy, screenshots):
    comfy.search_nodes("hidiffusion")
    comfy.pick_first_search_result()
    (node,) = comfy.nodes()
    assert node["type"] == "ApplyHiDiffusion"
    spec = http(f"{server.url}/object_info/ApplyHiDiffusion")[1]["ApplyHiDiffusion"]["input"]
    widgets = {name: options[1]["tooltip"] for group in spec.values() for name, options in group.items()
               if options[0] in ("INT", "FLOAT", "BOOLEAN", "STRING") or isinstance(options[0], list)}  # fmt: skip
    assert [w["name"] for w in node["widgets"]] == list(widgets)
    tooltip = comfy.hover_widget(node["id"], "width")
    comfy.screenshot(screenshots / "widget-tooltip.png")
    assert tooltip == widgets["width"]


def test_the_docs_panel_renders_our_page(comfy, screenshots):
    text = comfy.open_node_docs(comfy.add_node("ApplyHiDiffusion"))
    comfy.screenshot(screenshots / "node-docs.png")
    page = (REPO_ROOT / "web" / "docs" / "ApplyHiDiffusion.md").read_text()
    assert text.splitlines()[0].strip() == page.splitlines()[0].lstrip("# ").strip()
    assert "Native-resolution gate, per call." in text and "`" not in text  # rendered, not raw markdown


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.stem for path in EXAMPLES])
def test_an_example_workflow_loads_with_no_missing_node_or_invalid_widget(comfy, path, screenshots):
    comfy.load_workflow_file(path)
    nodes = comfy.nodes()
    assert all(node["registered"] for node in nodes), [n["type"] for n in nodes if not n["registered"]]
    assert not comfy.dialogs_naming(list(OUR_NODES)), "a dialog names our nodes (missing nodes?)"
    saved = {str(node["id"]): node for node in json.loads(path.read_text())["nodes"]}
    for node in nodes:
        if node["type"] not in OUR_NODES:
            continue
        for widget in node["widgets"]:
            value = widget["value"]
            if widget["values"] is not None:
                assert value in widget["values"], (node["type"], widget)
            if widget["min"] is not None and isinstance(value, int | float):
                assert widget["min"] <= value <= widget["max"], (node["type"], widget)
        assert [w["value"] for w in node["widgets"]] == saved[str(node["id"])]["widgets_values"], node["type"]
    comfy.tidy_for_screenshot()
    comfy.screenshot(screenshots / f"workflow-{path.stem}.png")  # the README shows each


def tiny_copy_of_the_auto_workflow(folder: Path) -> Path:
    """auto_hidiffusion.json with the test pack's tiny checkpoint in place of the checkpoint
    loader (same three outputs), at 512x512, told a native size of 256 (so still twice the
    native side) and 2 steps, so a CPU samples it in seconds."""
    workflow = copy.deepcopy(json.loads((REPO_ROOT / "example_workflows" / "auto_hidiffusion.json").read_text()))
    for node in workflow["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["type"], node["widgets_values"] = "TestTinyCheckpoint", ["sd15"]
        elif node["type"] in ("EmptyLatentImage", "ApplyHiDiffusion", "HiDiffusionInspect"):
            node["widgets_values"][:2] = [512, 512]
            if node["type"] != "EmptyLatentImage":
                node["widgets_values"][-1] = "native_resolution: 256"  # the advanced YAML
        elif node["type"] == "KSampler":
            node["widgets_values"][2] = 2  # steps
    path = folder / "auto_hidiffusion_tiny.json"
    path.write_text(json.dumps(workflow))
    return path


def test_queueing_the_auto_workflow_ends_with_an_image(server, comfy, screenshots, tmp_path):
    comfy.load_workflow_file(tiny_copy_of_the_auto_workflow(tmp_path))
    comfy.fit_view()  # the canvas loads a node's image only once it draws the node
    comfy.queue()
    image = comfy.wait_for_image("SaveImage")
    comfy.screenshot(screenshots / "auto-workflow-run.png")
    assert image["width"] == 512 and image["height"] == 512, image
    assert list((server.base / "output").glob("hidiffusion_auto_*.png"))
    assert "HiDiffusion: SD1.x/SD2.x model, native 256px, target 512x512px" in server.log
