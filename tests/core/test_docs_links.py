"""Every relative link in the README and docs/ leads somewhere: the file exists and, for a
link with an anchor, the page has that heading (as GitHub names its anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "example_workflows" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img src=\"([^\"]+)\"")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {anchor(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    links = [markdown or html for markdown, html in LINK.findall(text)]
    return [link for link in links if not re.match(r"^[a-z]+:", link)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = []
    for link in relative_links(page):
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        exists = target.exists()
        if not exists or (fragment and target.suffix == ".md" and fragment not in anchors(target)):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_the_anchor_rule_is_githubs():
    assert anchor("HiDiffusion Hires Fix (`HiDiffusionHiresFix`)") == "hidiffusion-hires-fix-hidiffusionhiresfix"
    assert anchor("diffusers (`apply_hidiffusion`)") == "diffusers-apply_hidiffusion"
    assert anchor("Set up, run, test (developers)") == "set-up-run-test-developers"
