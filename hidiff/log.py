"""The pack's one logger; every message carries the ``[HiDiffusion]`` prefix."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

PREFIX = "[HiDiffusion]"


class _PrefixAdapter(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"{PREFIX} {msg}", kwargs


logger = _PrefixAdapter(logging.getLogger("hidiffusion"), {})
