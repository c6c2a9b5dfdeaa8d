"""The ComfyUI web page as the browser tests use it: open it, find things a user sees, and
record every console error, page error and failed request along the way.

What a user does (clicking a sidebar tab, typing into the node search, hovering a widget,
opening a file, pressing Run) goes through the page. Reading the state that a user reads off
the canvas (a node's widgets, the image a node shows) goes through the frontend's ``app``
object, because litegraph draws the graph on a canvas with no DOM to query.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_server import PACK_FOLDER, Server
from playwright.sync_api import TimeoutError as PlaywrightTimeout

OUR_MARKERS = (
    f"/extensions/{PACK_FOLDER}/",
    "hidiffusion",
    "HiDiffusion",
    "RAUNet",
    "MSWMSA",
)
"""Text by which a console message or a URL points at this pack."""


@dataclass
class Problems:
    """Console errors, uncaught page errors and failed or refused requests of one page."""

    entries: list[str] = field(default_factory=list)

    def ours(self) -> list[str]:
        return [
            entry
            for entry in self.entries
            if any(marker in entry for marker in OUR_MARKERS) and not LOCALE_PROBE.search(entry)
        ]


LOCALE_PROBE = re.compile(rf"/extensions/{PACK_FOLDER}/docs/\w+/[a-z]{{2}}(-[A-Za-z]+)?\.md")
"""The docs panel first asks for docs/<node>/<locale>.md and falls back to docs/<node>.md (ours):
the refused first request is the frontend's probe, not a fault of the pack."""


SEARCH_RESULTS = """(() => {
    const old = [...document.querySelectorAll('.option-display-name')];
    if (old.length) return old.map(e => e.innerText.split('\\n')[0].trim());
    return [...document.querySelectorAll('[data-testid=result-item]')]
        .map(item => item.querySelector('span.truncate').innerText.trim());
})()"""
"""The node search's offers (display names), in the old (PrimeVue) and the new search box."""


class ComfyPage:
    """One browser tab on the ComfyUI server."""

    def __init__(self, browser: Any, server: Server, viewport: tuple[int, int] = (2400, 1200)) -> None:
        self.server = server
        self.page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        self.problems = Problems()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.entries.append(f"page error: {error}"))
        self.page.on("requestfailed", lambda request: self.problems.entries.append(f"failed: {request.url}"))
        self.page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            location = message.location.get("url", "") if message.location else ""
            self.problems.entries.append(f"console error: {message.text} ({location})")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.problems.entries.append(f"HTTP {response.status}: {response.url}")

    def open(self, timeout_s: float = 180) -> ComfyPage:
        """Load the app and wait until the graph canvas and the node definitions are there."""
        self.page.goto(self.server.url)
        self.page.wait_for_function(
            "() => window.app && window.app.graph && window.app.canvas"
            " && window.LiteGraph && LiteGraph.registered_node_types['ApplyHiDiffusion']",
            timeout=timeout_s * 1000,
        )
        time.sleep(1)  # the canvas binds its mouse handlers after the first frames
        self.dismiss_dialogs()
        return self

    def dismiss_dialogs(self) -> None:
        """Close what a first start may show (release notes, templates) so clicks reach the canvas."""
        for _ in range(3):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            time.sleep(0.3)

    def evaluate(self, script: str, argument: Any = None) -> Any:
        return self.page.evaluate(script, argument)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))

    # the sidebar's node library
    def open_node_library(self) -> None:
        self.page.locator(".node-library-tab-button").click()
        self.page.locator("[role=treeitem]").first.wait_for()

    def library_items(self) -> list[dict]:
        """The node library's tree rows as the panel shows them, top to bottom: label, depth
        (1 = top) and where to click (newer frontends render the rows of a virtual list in
        no particular DOM order)."""
        return self.evaluate(
            """() => [...document.querySelectorAll('[role=treeitem]')]
                .filter(item => !item.closest('[role=dialog]'))
                .map(item => {
                    const row = item.querySelector(':scope > .p-tree-node-content') || item;
                    const box = row.getBoundingClientRect();
                    return {
                        label: (item.querySelector('.node-label') || item).innerText.split('\\n')[0].trim(),
                        level: Number(item.getAttribute('aria-level') || 0),
                        x: box.left + Math.min(box.width / 2, 80), y: box.top + box.height / 2,
                        shown: box.height > 0,
                    };
                })
                .filter(item => item.shown)
                .sort((a, b) => a.y - b.y)"""
        )

    def open_library_path(self, folders: list[str], wanted: set[str]) -> list[list[str]]:
        """Open the folders of a category one by one, as a user clicks them, under each
        top-level folder of that name in turn (newer frontends list core and extension nodes
        apart, each in its own tree), until the last folder holds every ``wanted`` row; the
        rows of each last folder's children (a tree without them is closed again)."""
        found = []
        for top in range(len(self._top_rows(folders[0]))):
            found.append(self._open_from(top, folders))
            if wanted <= set(found[-1]):
                break
            self._click_tree_row(self._top_rows(folders[0])[top])
        return found

    def _top_rows(self, label: str) -> list[int]:
        return [i for i, item in enumerate(self.library_items()) if item["level"] == 1 and item["label"] == label]

    def _open_from(self, top: int, folders: list[str]) -> list[str]:
        start, depth = None, 0
        for depth, folder in enumerate(folders, start=1):
            items = self.library_items()
            after = [i for i, item in enumerate(items) if item["level"] == depth and item["label"] == folder]
            after = [i for i in after if start is None or i > start]
            if depth == 1:
                after = after[top:]
            if not after:
                return []
            start = after[0]
            self._click_tree_row(start)
        items = self.library_items()
        children = []
        for item in items[start + 1 :]:
            if item["level"] <= depth:
                break
            if item["level"] == depth + 1:
                children.append(item["label"])
        return children

    def _click_tree_row(self, index: int) -> None:
        item = self.library_items()[index]
        self.page.mouse.click(item["x"], item["y"])
        time.sleep(0.7)

    # the node search (double-click on an empty spot of the canvas)
    def search_nodes(self, text: str) -> list[str]:
        """Type into the node search and return the display names it offers, best first."""
        box = self.page.locator("#graph-canvas").bounding_box()
        for _ in range(3):  # a double-click while the app is still settling can go unseen
            self.page.mouse.dblclick(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
            with contextlib.suppress(PlaywrightTimeout):  # it opens with its text field focused
                self.page.wait_for_function("() => document.activeElement?.tagName === 'INPUT'", timeout=3000)
                break
        else:
            raise AssertionError("the node search did not open on a double-click on the empty canvas")
        self.page.keyboard.type(text, delay=20)
        with contextlib.suppress(PlaywrightTimeout):  # nothing found is an answer too
            self.page.wait_for_function(f"() => ({SEARCH_RESULTS}).length > 0", timeout=5000)
        time.sleep(0.5)  # the list settles on the whole query
        return self.evaluate(f"() => {SEARCH_RESULTS}")

    def pick_first_search_result(self) -> None:
        """Enter on the best offer; newer frontends then let the node follow the mouse until a
        click drops it (older ones place it at once, and the click only selects it)."""
        self.page.keyboard.press("Enter")
        self.page.wait_for_function("() => app.graph._nodes.length === 1")
        time.sleep(0.5)
        box = self.page.locator("#graph-canvas").bounding_box()
        self.page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6)
        time.sleep(0.5)

    # the graph, as the canvas shows it
    def nodes(self) -> list[dict]:
        """Every node of the graph: id, type, title, widgets (name, value, options) and whether
        the frontend marked it as missing (no registered node type)."""
        return self.evaluate(
            """() => app.graph._nodes.map(node => ({
                id: node.id, type: node.type, title: node.title,
                registered: node.type in LiteGraph.registered_node_types,
                widgets: (node.widgets || []).map(w => ({
                    name: w.name, type: w.type, value: w.value,
                    values: Array.isArray(w.options?.values) ? w.options.values : null,
                    min: w.options?.min ?? null, max: w.options?.max ?? null,
                    tooltip: w.tooltip ?? null,
                })),
            }))"""
        )

    def clear_graph(self) -> None:
        self.evaluate("() => app.graph.clear()")

    def add_node(self, node_type: str, pos: tuple[float, float] = (300, 200)) -> int:
        return self.evaluate(
            """([type, pos]) => { const node = LiteGraph.createNode(type); node.pos = pos;
                app.graph.add(node); app.canvas.setDirty(true, true); return node.id }""",
            [node_type, list(pos)],
        )

    def node_box(self, node_id: int) -> dict:
        return self.evaluate(
            """id => { const n = app.graph.getNodeById(id);
                return {pos: n.pos, size: n.size, widgets: Object.fromEntries(n.widgets.map(w => [w.name, w.y]))} }""",
            node_id,
        )

    def hover_widget(self, node_id: int, name: str) -> str:
        """Rest the mouse on a widget and return the tooltip the canvas shows for it."""
        box = self.node_box(node_id)
        x, y = self.canvas_point(box["pos"][0] + 60, box["pos"][1] + box["widgets"][name] + 10)
        self.page.mouse.move(x - 40, y - 40)
        time.sleep(0.3)
        self.page.mouse.move(x, y, steps=4)
        tooltip = self.page.locator(".node-tooltip")
        tooltip.wait_for(state="visible", timeout=5000)
        return tooltip.inner_text().strip()

    def select_node(self, node_id: int) -> None:
        """Click the node's title bar."""
        box = self.node_box(node_id)
        self.page.mouse.click(*self.canvas_point(box["pos"][0] + 80, box["pos"][1] - 15))
        time.sleep(0.5)

    def open_node_docs(self, node_id: int) -> str:
        """Select the node, press the selection toolbox's info button; return the docs panel's text."""
        self.select_node(node_id)
        self.page.locator("[data-testid=info-button]").click()
        panel = self.page.locator(".node-help-content")
        panel.wait_for(state="visible", timeout=10000)
        self.page.wait_for_function(
            "() => !document.querySelector('.node-help-content').innerText.includes('Loading')", timeout=10000
        )
        time.sleep(0.5)
        return panel.inner_text()

    def dialogs_naming(self, names: list[str]) -> list[str]:
        """Texts of open dialogs that name any of ``names`` (a missing-nodes dialog lists the
        node types it could not find; a missing-models one names files, not node types)."""
        texts = self.evaluate("() => [...document.querySelectorAll('.p-dialog, [role=dialog]')].map(d => d.innerText)")
        return [text for text in texts if any(name in text for name in names)]

    def fit_view(self) -> None:
        """Press '.' over the canvas (Fit View), as a user does to see the whole workflow."""
        self.page.locator("#graph-canvas").focus()
        self.page.keyboard.press(".")
        time.sleep(0.5)

    def tidy_for_screenshot(self) -> None:
        """What a user would close before looking at a loaded workflow: the toasts (a missing
        checkpoint, here always) and the properties panel they open; then Fit View."""
        self.evaluate(
            """() => { for (const b of document.querySelectorAll('button[aria-label=Close]')) {
                 const r = b.getBoundingClientRect(); if (r.width > 0 && r.x > 1800 && r.y > 80 && r.y < 300) b.click(); } }"""
        )
        overview = self.page.get_by_text("Workflow Overview")
        if overview.count() and overview.first.is_visible():
            self.page.get_by_label("Toggle properties panel").first.click()
        time.sleep(0.5)
        self.fit_view()

    def queue(self) -> None:
        """Press Run (the top bar's queue button)."""
        self.page.locator("[data-testid=queue-button], button:has-text('Run')").first.click()

    def wait_for_image(self, node_type: str, timeout_s: float = 240) -> dict:
        """Wait until a node of ``node_type`` shows an image; its size and address."""
        script = """type => { const n = app.graph._nodes.find(n => n.type === type);
            const img = n && n.imgs && n.imgs[0];
            return img && img.complete && img.naturalWidth > 0
                ? {width: img.naturalWidth, height: img.naturalHeight, src: img.src} : null }"""
        self.page.wait_for_function(script, arg=node_type, timeout=timeout_s * 1000)
        return self.evaluate(script, node_type)

    def canvas_point(self, graph_x: float, graph_y: float) -> tuple[float, float]:
        """Page coordinates of a point of the graph (the canvas may be panned and zoomed)."""
        box = self.page.locator("#graph-canvas").bounding_box()
        x, y = self.evaluate("([x, y]) => app.canvas.ds.convertOffsetToCanvas([x, y])", [graph_x, graph_y])
        return box["x"] + x / self.device_ratio(), box["y"] + y / self.device_ratio()

    def device_ratio(self) -> float:
        return self.evaluate("() => window.devicePixelRatio || 1")

    def load_workflow_file(self, path: Path) -> None:
        """Open a workflow file as Workflow > Open does (the app's file input)."""
        self.page.set_input_files("#comfy-file-input", str(path))
        self.page.wait_for_function(
            "n => app.graph._nodes.length === n", arg=len(json.loads(path.read_text())["nodes"]), timeout=30000
        )
        time.sleep(0.5)
