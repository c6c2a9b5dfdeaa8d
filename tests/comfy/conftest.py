"""Fixtures for the tier that runs inside real ComfyUI (see harness.py)."""

from __future__ import annotations

import logging

import pytest
from harness import comfyui_available, import_comfyui, load_pack

if comfyui_available():
    import_comfyui()
else:
    # Reported loudly by tests/conftest.py; with HIDIFF_REQUIRED_TIERS=comfyui the run fails.
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def pack() -> dict:
    """ComfyUI's node registry after loading this pack with ComfyUI's loader."""
    return load_pack()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def logs():
    """Everything logged (by any logger) during the test."""
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
