"""Settings dataclasses and their command line, written once.

A field made with :func:`setting` carries its help text and how its value is checked; the
command line adds one flag per such field (:func:`add_settings`, ``--field-name``, its help
ending with the default) and builds the dataclass's arguments back from the parsed options
(:func:`settings_from`). So :class:`~fdbpl.train.TrainConfig` and
:class:`~fdbpl.losses.LossWeights` hold each option's default and help, and ``fdbpl train``
repeats neither.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fdbpl._checks import check_count, check_number
from fdbpl.errors import InputValueError

__all__ = [
    "add_settings",
    "check_settings",
    "flag_reason",
    "integer_type",
    "number_type",
    "setting",
    "settings_from",
]


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    source: str | None = None,
) -> Any:
    """A dataclass field with its command-line form.

    Args:
        default: the field's default (written here only).
        help: what it does; the flag's help adds ``(default: ...)`` unless it says itself
            what the default or leaving it out does.
        minimum, positive: the smallest value an ``int`` / ``float`` flag accepts.
        choices: the values a ``str`` flag accepts.
        metavar: the flag's value's name in the usage line.
        source: where the default comes from, shown after it (``"the paper's"``).
    """
    cli = {
        "help": help,
        "minimum": minimum,
        "positive": positive,
        "choices": choices,
        "metavar": metavar,
        "source": source,
    }
    return dataclasses.field(default=default, metadata={"cli": cli})


def flag_reason(error: Exception, text: str | None = None) -> str:
    """A library error's message without its leading ``name: `` (the CLI names the flag),
    quoting what the user typed (``text``) as what it got."""
    message = str(error)
    head, sep, rest = message.partition(": ")
    reason = rest if sep and " " not in head else message
    if text is not None and ", got " in reason:
        reason = f"{reason.rsplit(', got ', 1)[0]}, got {text!r}"
    return reason


def integer_type(minimum: int) -> Callable[[str], int]:
    """An argparse type: the text as an integer >= ``minimum`` (fdbpl's own check)."""

    def parse(text: str) -> int:
        try:
            value: object = int(text)
        except ValueError:
            value = text
        try:
            return check_count("value", value, minimum)
        except ValueError as e:
            raise argparse.ArgumentTypeError(flag_reason(e, text)) from None

    parse.__name__ = "integer"
    return parse


def number_type(minimum: float | None = None, positive: bool = False) -> Callable[[str], float]:
    """An argparse type: the text as a finite number (fdbpl's own check)."""

    def parse(text: str) -> float:
        try:
            value: object = float(text)
        except ValueError:
            value = text
        try:
            return check_number("value", value, minimum, positive)
        except ValueError as e:
            raise argparse.ArgumentTypeError(flag_reason(e, text)) from None

    parse.__name__ = "number"
    return parse


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _says_its_default(text: str) -> bool:
    return "default" in text


def add_settings(parser: Any, cls: type, names: Iterable[str] | None = None) -> None:
    """Add ``--field-name`` for each :func:`setting` field of the dataclass ``cls`` (those in
    ``names``, in that order, where given) to ``parser`` (a parser or an argument group)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if "cli" in f.metadata}
    for name in names if names is not None else fields:
        f = fields[name]
        cli = f.metadata["cli"]
        default = f.default
        shown = _shown(default) + (f", {cli['source']}" if cli["source"] else "")
        help_text = cli["help"] if _says_its_default(cli["help"]) else f"{cli['help']} (default: {shown})"
        flag = "--" + name.replace("_", "-")
        kind = str(f.type)
        if kind.startswith("bool"):
            parser.add_argument(flag, dest=name, action="store_true", default=default, help=help_text)
            continue
        if kind.startswith("int"):
            convert: Callable[[str], Any] = integer_type(int(cli["minimum"] or 0))
        elif kind.startswith("float"):
            convert = number_type(cli["minimum"], cli["positive"])
        else:
            convert = str
        parser.add_argument(
            flag,
            dest=name,
            type=convert,
            default=default,
            choices=cli["choices"],
            metavar=cli["metavar"],
            help=help_text,
        )


def settings_from(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The dataclass ``cls``'s fields that the parsed ``args`` hold, by name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def check_settings(settings: Any) -> None:
    """Refuse a :func:`setting` field's value that its flag would refuse (naming the field),
    and store each number as a plain ``int`` / ``float``; ``None`` passes where it is the
    default. Call it from the dataclass's ``__post_init__`` (frozen ones too)."""
    for f in dataclasses.fields(settings):
        if "cli" not in f.metadata:
            continue
        cli, value, kind = f.metadata["cli"], getattr(settings, f.name), str(f.type)
        if value is None and f.default is None:
            continue
        if kind.startswith("int"):
            minimum = cli["minimum"] if cli["minimum"] is not None else 0
            object.__setattr__(settings, f.name, check_count(f.name, value, int(minimum)))
        elif kind.startswith("float"):
            object.__setattr__(settings, f.name, check_number(f.name, value, cli["minimum"], cli["positive"]))
        elif cli["choices"] is not None and value not in cli["choices"]:
            raise InputValueError(f"{f.name}: expected one of {list(cli['choices'])}, got {value!r}")
