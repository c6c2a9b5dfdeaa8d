"""Block lists as users write them: "1, 2" in a widget, or [1, 2] in YAML."""

from __future__ import annotations

from collections.abc import Sequence


class BlockListError(ValueError):
    """A block list that is not a comma list of non-negative integers."""


def parse_block_list(name: str, value: str | Sequence[int] | int | None) -> tuple[int, ...]:
    """Parse one block list input into a tuple of block numbers, in the order given.

    Accepts a comma-separated string (spaces allowed, empty string = no blocks), a
    sequence of integers, or one integer. Letters, negatives, fractions and empty items
    between commas are errors naming the input, so a typo never silently drops a block.
    """
    if value is None:
        return ()
    if isinstance(value, bool):
        raise BlockListError(f"{name}: expected a comma list of block numbers such as '1,2', got {value!r}")
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        items: list[object] = [item.strip() for item in text.split(",")]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise BlockListError(f"{name}: expected a comma list of block numbers such as '1,2', got {value!r}")
    blocks = []
    for item in items:
        blocks.append(_parse_item(name, value, item))
    seen: set[int] = set()
    return tuple(b for b in blocks if not (b in seen or seen.add(b)))


def _parse_item(name: str, whole: object, item: object) -> int:
    if isinstance(item, bool):
        item = repr(item)
    if isinstance(item, int):
        number = item
    elif isinstance(item, str) and item.isdigit() and item.isascii():
        number = int(item)
    else:
        what = "an empty item" if item == "" else f"{item!r}"
        raise BlockListError(
            f"{name} = {whole!r} contains {what}; write non-negative block numbers separated by commas, e.g. '1,2'"
        )
    if number < 0:
        raise BlockListError(f"{name} = {whole!r} contains {number}; block numbers are 0 or more")
    return number


def format_block_list(blocks: Sequence[int]) -> str:
    """Blocks as the comma list the nodes accept."""
    return ",".join(str(b) for b in blocks)
