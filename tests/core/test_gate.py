"""The native-size gate: one rule for both adapters and the auto plan."""

from __future__ import annotations

import pytest

from hidiff.core.gate import at_or_below_native, gated_message


@pytest.mark.parametrize(
    ("height", "width", "gated"),
    [(128, 128, True), (96, 128, True), (1, 1, True), (128, 129, False), (129, 64, False), (256, 256, False)],
)
def test_the_larger_side_decides(height, width, gated):
    assert at_or_below_native(height, width, 128) is gated


def test_the_message_names_the_call_and_the_native_size():
    message = gated_message(96, 128, 128)
    assert "1024x768px" in message and "native 1024px" in message and "unpatched" in message
