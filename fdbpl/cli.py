"""The ``fdbpl`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import fdbpl

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdbpl",
        description=(
            "Faster Distillation-Based Prompt Learning for CLIP. The library's pieces are "
            "imported from Python: fdbpl.sparsify, fdbpl.losses."
        ),
    )
    parser.add_argument("--version", action="version", version=f"fdbpl {fdbpl.__version__}")
    parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fdbpl`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
    return 0
