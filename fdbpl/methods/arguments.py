"""The command line of the registered methods' own options: ``--METHOD-OPTION`` flags
generated from each :class:`~fdbpl.methods.MethodSpec`'s options dataclass, so that an
option and its default are written once, in the method's file."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from fdbpl.errors import FDBPLError
from fdbpl.methods.registry import method_names, method_spec
from fdbpl.methods.spec import MethodSpec

__all__ = ["add_method_arguments", "method_options_from"]


def _flag(spec: MethodSpec, name: str) -> str:
    return f"--{spec.name}-{name.replace('_', '-')}"


def _dest(spec: MethodSpec, name: str) -> str:
    return f"method_option__{spec.name}__{name}"


def _converter(annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    kind = int if text.startswith("int") else float if text.startswith("float") else str

    def convert(value: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {value!r}"
            ) from None

    convert.__name__ = kind.__name__
    return convert


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--METHOD-OPTION`` flag per field of every registered method's options."""
    for name in method_names():
        spec = method_spec(name)
        if spec.options is None:
            continue
        group = parser.add_argument_group(f"options of --method {name}")
        for f in dataclasses.fields(spec.options):
            default = spec.option_defaults[f.name]
            help_text = f.metadata.get("help", f"{name}'s {f.name} (default: {default!r})")
            if str(f.type).startswith("bool"):
                group.add_argument(
                    _flag(spec, f.name), dest=_dest(spec, f.name), action="store_true", help=help_text
                )
            else:
                group.add_argument(
                    _flag(spec, f.name),
                    dest=_dest(spec, f.name),
                    metavar=f.name.upper(),
                    type=_converter(f.type),
                    help=help_text,
                )


def method_options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The chosen ``--method``'s options given on the command line (by field name); a flag of
    another method, or a value the method refuses, is a parser error naming the flag."""
    chosen: dict[str, Any] = {}
    for name in method_names():
        spec = method_spec(name)
        for field_name in spec.option_defaults:
            value = getattr(args, _dest(spec, field_name), None)
            if value in (None, False):
                continue
            if name != args.method:
                parser.error(f"{_flag(spec, field_name)}: an option of --method {name}, not of {args.method}")
            chosen[field_name] = value
    spec = method_spec(args.method)
    try:
        spec.parse_options(chosen)
    except FDBPLError as e:
        message = str(e)
        for field_name in chosen:
            if message.startswith(f"{field_name}:"):
                parser.error(_flag(spec, field_name) + message[len(field_name) :])
        raise
    return chosen
