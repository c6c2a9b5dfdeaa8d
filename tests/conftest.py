"""Test-session report: how many tests ran inside real ComfyUI.

A run in which the ComfyUI tier did not run is not a green run for a ComfyUI feature:
with ``HIDIFF_REQUIRE_COMFYUI=1`` (set by .ci/run) such a run fails.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
from harness import comfyui_available, comfyui_path

COMFY_TIER = "tests/comfy/"
_outcomes: Counter = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if COMFY_TIER not in report.nodeid.replace("\\", "/"):
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _outcomes[report.outcome] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    write = terminalreporter.write_line
    if not comfyui_available():
        write(f"!!! ComfyUI NOT FOUND at {comfyui_path()}: NO ComfyUI test ran.", red=True, bold=True)
        write("!!! Fix: run `bash scripts/setup.sh`, or set COMFYUI_PATH to a ComfyUI 0.3.64 checkout.", red=True)
    write(
        f"ComfyUI tier (inside real ComfyUI at {comfyui_path()}): "
        f"{_outcomes['passed']} passed, {_outcomes['failed']} failed, {_outcomes['skipped']} skipped",
        bold=True,
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("HIDIFF_REQUIRE_COMFYUI") and _outcomes["passed"] == 0 and exitstatus == 0:
        session.exitstatus = 1
