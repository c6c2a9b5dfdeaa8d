"""Turning node inputs and ``yaml_parameters`` into one checked set of settings."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import yaml


class ParameterError(ValueError):
    """A node input that cannot be used; the message names the input and valid values."""


def parse_yaml_parameters(
    text: str | None, valid_keys: Mapping[str, str], input_name: str = "yaml_parameters"
) -> dict[str, Any]:
    """Parse a YAML mapping of overrides and advanced keys.

    ``valid_keys`` maps each accepted key to a one-line description, used in the error
    for an unknown key. Empty text or ``null`` means no overrides.
    """
    if text is None or not str(text).strip():
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParameterError(f"{input_name} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterError(
            f"{input_name} must be a YAML mapping such as 'start_time: 0.2', got {type(data).__name__}; "
            f"valid keys: {', '.join(valid_keys)}"
        )
    unknown = [str(k) for k in data if k not in valid_keys]
    if unknown:
        listing = "\n".join(f"  {key}: {doc}" for key, doc in valid_keys.items())
        raise ParameterError(f"{input_name}: unknown key(s) {', '.join(unknown)}. Valid keys:\n{listing}")
    return dict(data)


@contextmanager
def naming_the_yaml(overrides: Mapping[str, Any], input_name: str = "yaml_parameters") -> Iterator[None]:
    """Errors about a value the YAML set say where it came from.

    A check names the key ("start_time must be a number, got [1, 2]"); when that value came
    from the YAML input, the widget of the same name is not what the user must fix, so the
    message becomes "yaml_parameters: start_time must be a number, got [1, 2]".
    """
    try:
        yield
    except ValueError as exc:
        message = str(exc)
        if message.startswith(f"{input_name}:") or not any(
            message.startswith((f"{key} ", f"{key}:")) for key in overrides
        ):
            raise
        raise ParameterError(f"{input_name}: {message}") from None


def require_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else an error listing them."""
    if value not in choices:
        raise ParameterError(f"{name} = {value!r} is not valid; use one of {', '.join(choices)}")
    return value


def require_number(name: str, value: Any) -> float:
    """``value`` as a float, else an error naming the input."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    return float(value)


def require_bool(name: str, value: Any) -> bool:
    """``value`` if it is a YAML boolean, else an error naming the input."""
    if not isinstance(value, bool):
        raise ParameterError(f"{name} must be true or false, got {value!r}")
    return value


def require_native_resolution(value: Any) -> int | None:
    """A native size in pixels (a whole number, 64 or more), or None for the model's own."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 64):
        raise ParameterError(f"native_resolution must be a whole number of pixels (64 or more), got {value!r}")
    return value
