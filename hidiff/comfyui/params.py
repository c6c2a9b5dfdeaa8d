"""Turning node inputs and ``yaml_parameters`` into one checked set of settings.

Each input of a node, and each key only its YAML can set, is one :class:`Parameter`: name,
default, check, the one-line description the YAML errors list, and (for a widget) its
tooltip and V3 input. A node's :class:`ParameterSet` derives everything else from those
declarations: the defaults, the valid YAML keys, the V3 inputs in their saved order, and the
checked values a settings builder turns into its dataclass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from comfy_api.latest import io

from .blocks import parse_block_list

T = TypeVar("T")

ADVANCED = {"advanced": True} if "advanced" in inspect.signature(io.String.Input.__init__).parameters else {}
"""Keyword for inputs the frontend may fold away as advanced, where ComfyUI has the flag (v0.10.0 and newer)."""


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


def require_fraction(name: str, value: Any) -> float:
    """``value`` as a float from 0 to 1, else an error naming the input."""
    number = require_number(name, value)
    if not 0.0 <= number <= 1.0:
        raise ParameterError(f"{name} = {value!r} is out of range: it must be 0 to 1")
    return number


def optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check`` for a key whose None means "not set"."""
    return lambda name, value: None if value is None else check(name, value)


# --- declarations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Widget:
    """How a parameter shows on the node: its tooltip and the V3 input that carries it."""

    tooltip: str
    make: Callable[..., Any]
    """``make(name, default=..., tooltip=..., **extras)`` -> a V3 input (``io.String.Input`` ...)."""
    extras: Mapping[str, Any] | None = None
    advanced: bool = False

    def input(self, name: str, default: Any) -> Any:
        extras = dict(self.extras or {})
        if "options" in extras and callable(extras["options"]):
            extras["options"] = list(extras["options"]())
        return self.make(name, default=default, tooltip=self.tooltip, **extras, **(ADVANCED if self.advanced else {}))


@dataclass(frozen=True)
class Parameter:
    """One node input or YAML key, declared once."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    """``check(name, value)`` -> the checked value; raises :class:`ParameterError` naming ``name``."""
    doc: str
    """One line for the YAML key list (the unknown-key error and docs/nodes.md)."""
    widget: Widget | None = None
    """None: only the YAML sets it."""


def blocks(name: str, default: str, doc: str, tooltip: str, advanced: bool = False) -> Parameter:
    """A comma list of block numbers, as a text widget."""
    return Parameter(name, default, parse_block_list, doc, Widget(tooltip, io.String.Input, advanced=advanced))


def choice(
    name: str,
    default: str,
    options: Callable[[], tuple[str, ...]],
    doc: str,
    tooltip: str | None = None,
    advanced: bool = False,
) -> Parameter:
    """One of ``options()`` (read when checked, so late additions such as bleh's count), a dropdown."""
    widget = None if tooltip is None else Widget(tooltip, io.Combo.Input, {"options": options}, advanced)
    return Parameter(name, default, lambda key, value: require_choice(key, value, options()), doc, widget)


def number(
    name: str,
    default: float,
    doc: str,
    tooltip: str,
    *,
    check: Callable[[str, Any], float] = require_number,
    low: float = 0.0,
    high: float = 999.0,
    step: float = 0.01,
    advanced: bool = False,
) -> Parameter:
    """A number, as a float widget from ``low`` to ``high``."""
    extras = {"min": low, "max": high, "step": step}
    return Parameter(name, default, check, doc, Widget(tooltip, io.Float.Input, extras, advanced))


def yaml_only(name: str, default: Any, check: Callable[[str, Any], Any], doc: str) -> Parameter:
    """A key only ``yaml_parameters`` sets."""
    return Parameter(name, default, check, doc)


@dataclass(frozen=True)
class ParameterSet:
    """The parameters of one node, in the order of its widgets (then the YAML-only keys)."""

    parameters: tuple[Parameter, ...]

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.parameters}

    @property
    def yaml_keys(self) -> dict[str, str]:
        return {p.name: p.doc for p in self.parameters}

    @property
    def widget_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if p.widget is not None)

    @property
    def yaml_only_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if p.widget is None)

    def inputs(self) -> list[Any]:
        """The V3 inputs of the widgets, in declaration order (the order saved workflows use)."""
        return [p.widget.input(p.name, p.default) for p in self.parameters if p.widget is not None]

    def build(self, yaml_text: str | None, inputs: Mapping[str, Any], make: Callable[[dict[str, Any]], T]) -> T:
        """``make`` of the checked values: defaults, then ``inputs``, then the YAML's keys.

        ``make`` builds the settings and runs the checks that span several values. Errors
        about a value the YAML set name the YAML input (:func:`naming_the_yaml`).
        """
        unknown = set(inputs) - set(self.yaml_keys)
        if unknown:
            raise TypeError(f"unexpected inputs: {', '.join(sorted(unknown))}")
        overrides = parse_yaml_parameters(yaml_text, self.yaml_keys)
        values = {**self.defaults, **inputs, **overrides}
        with naming_the_yaml(overrides):
            return make({p.name: p.check(p.name, values[p.name]) for p in self.parameters})

    def queue_check(self, build: Callable[..., Any], inputs: Mapping[str, Any]) -> bool | str:
        """A node's ``validate_inputs``: build the settings from the widget values known at
        queue time. A linked widget is not known yet (ComfyUI leaves it out or passes None),
        so nothing is checked then; ``execute`` checks it."""
        if any(inputs.get(name) is None for name in self.widget_names):
            return True
        widgets = {name: inputs[name] for name in self.widget_names}
        try:
            build(inputs.get("yaml_parameters") or "", **widgets)
        except ValueError as exc:
            return str(exc)
        return True
