"""Test-session report: one line per tier, and the gate CI relies on.

Tiers are the folders under ``tests/``: ``core`` (pure torch), ``comfy`` (inside real
ComfyUI, whose version the line names), ``diffusers`` and ``browser`` (the real server and
frontend in headless Chromium; its line names the ComfyUI and frontend versions). Each prints
"N passed, N failed, N skipped". A skip whose reason starts with
:data:`harness.FEATURE_SKIP` is a test that needs a ComfyUI feature the running version
lacks; those are named on the ComfyUI line.

``HIDIFF_OUTCOMES`` (a file path) writes the outcome of every compatibility test
(``tests/comfy/test_compat_*.py``, one per test function: failed over skipped over
passed across its parameters) and the ComfyUI version as JSON, from which
``scripts/make_compat_table.py`` writes docs/compatibility.md.

``HIDIFF_REQUIRED_TIERS`` (a comma list of ``core``, ``comfyui``, ``diffusers``, ``browser``; set by
.ci/run) makes the run fail when a required tier that this run covers passed nothing, had
a failure, skipped anything other than a feature-gated test, or ran fewer tests than it
collected (ComfyUI not found counts: its tests are then not even collected).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import FEATURE_SKIP, comfyui_available, comfyui_path, comfyui_version, pinned_frontend_version

TESTS = Path(__file__).resolve().parent
TIER_DIRS = {"core": "core", "comfyui": "comfy", "diffusers": "diffusers", "browser": "browser"}


@dataclass
class Tier:
    name: str
    collected: int = 0
    outcomes: Counter = field(default_factory=Counter)
    gated: set[str] = field(default_factory=set)

    def line(self) -> str:
        counts = (
            f"{self.outcomes['passed']} passed, {self.outcomes['failed']} failed, {self.outcomes['skipped']} skipped"
        )
        where = f"ComfyUI {comfyui_version() or '(not found)'} at {comfyui_path()}"
        if self.name == "browser":
            return f"browser tier, {where}, frontend {pinned_frontend_version() or '(none pinned)'}: {counts}"
        if self.name != "comfyui":
            return f"{self.name} tier: {counts}"
        gated = f" (feature-gated skips: {', '.join(sorted(self.gated))})" if self.gated else ""
        return f"ComfyUI tier, {where}: {counts}{gated}"

    def problem(self) -> str | None:
        """Why this tier is not green, or None."""
        ran = sum(self.outcomes.values())
        if self.outcomes["passed"] == 0:
            return "no test passed"
        if self.outcomes["failed"]:
            return f"{self.outcomes['failed']} failed"
        if self.outcomes["skipped"] > self.outcomes["gated"]:
            return f"{self.outcomes['skipped'] - self.outcomes['gated']} skipped without a missing ComfyUI feature"
        if ran < self.collected:
            return f"ran {ran} of {self.collected} collected tests"
        return None


_TIERS = {name: Tier(name) for name in TIER_DIRS}
COMPAT_TESTS = "test_compat_"
"""Start of the names of the compatibility test files (``tests/comfy/test_compat_<area>.py``)."""
_COMPAT_OUTCOMES: dict[str, str] = {}
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def _record_compat(report: pytest.TestReport) -> None:
    """The worst outcome so far of the compatibility test ``report`` belongs to."""
    path = Path(report.fspath).resolve()
    if path.parent != TESTS / "comfy" or not path.name.startswith(COMPAT_TESTS):
        return
    name = report.nodeid.split("::")[-1].split("[")[0]
    outcome = report.outcome
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        outcome = f"skipped: {reason.removeprefix('Skipped: ')}"
    previous = _COMPAT_OUTCOMES.get(name)
    if previous is None or _RANK[outcome.split(":")[0]] > _RANK[previous.split(":")[0]]:
        _COMPAT_OUTCOMES[name] = outcome


def _tier_of(path: str | Path) -> Tier | None:
    try:
        relative = Path(path).resolve().relative_to(TESTS)
    except ValueError:
        return None
    for name, folder in TIER_DIRS.items():
        if relative.parts and relative.parts[0] == folder:
            return _TIERS[name]
    return None


def _in_scope(config: pytest.Config, tier: str) -> bool:
    """Whether this run was asked to cover ``tier`` (its folder, a folder above it, or a file in it)."""
    folder = (TESTS / TIER_DIRS[tier]).resolve()
    args = [a.split("::")[0] for a in config.args if not a.startswith("-")] or ["tests"]
    for arg in args:
        path = (Path(config.invocation_params.dir) / arg).resolve()
        if path == folder or folder.is_relative_to(path) or path.is_relative_to(folder):
            return True
    return False


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:
        tier = _tier_of(item.path)
        if tier is not None:
            tier.collected += 1


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier_of(report.fspath)
    if tier is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _record_compat(report)
        tier.outcomes[report.outcome] += 1
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            if FEATURE_SKIP in reason:
                tier.outcomes["gated"] += 1
                tier.gated.add(reason.split(FEATURE_SKIP, 1)[1].strip())
    elif report.when == "teardown" and report.failed:
        _record_compat(report)
        tier.outcomes["failed"] += 1


def _required() -> list[str]:
    return [name.strip() for name in os.environ.get("HIDIFF_REQUIRED_TIERS", "").split(",") if name.strip()]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    write = terminalreporter.write_line
    if (_in_scope(config, "comfyui") or _in_scope(config, "browser")) and not comfyui_available():
        write(f"!!! ComfyUI NOT FOUND at {comfyui_path()}: NO ComfyUI test ran.", red=True, bold=True)
        write("!!! Fix: run `bash scripts/setup.sh`, or set COMFYUI_PATH to a ComfyUI checkout.", red=True)
    for name, tier in _TIERS.items():
        if _in_scope(config, name):
            write(tier.line(), bold=True)
    for name in _required():
        problem = _TIERS[name].problem() if name in _TIERS and _in_scope(config, name) else None
        if problem is not None:
            write(f"!!! required {name} tier is not green: {problem}", red=True, bold=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    outcomes_path = os.environ.get("HIDIFF_OUTCOMES")
    if outcomes_path and _COMPAT_OUTCOMES:
        document = {"comfyui": comfyui_version(), "outcomes": dict(sorted(_COMPAT_OUTCOMES.items()))}
        Path(outcomes_path).write_text(json.dumps(document, indent=1) + "\n")
    for name in _required():
        if name not in _TIERS:
            raise pytest.UsageError(f"HIDIFF_REQUIRED_TIERS: unknown tier {name!r}; tiers: {', '.join(_TIERS)}")
        if _in_scope(session.config, name) and _TIERS[name].problem() is not None and session.exitstatus == 0:
            session.exitstatus = 1
