"""The exceptions fdbpl raises.

Every error about user input is a :class:`ValueError`, so ``except ValueError`` keeps
working for callers that do not know about fdbpl; the subclasses let a caller tell a
bad shape from a bad value.
"""

from __future__ import annotations

__all__ = [
    "FDBPLError",
    "InputValueError",
    "PickleRefusedError",
    "ShapeError",
    "SplitFileError",
    "TableFormatError",
    "TableMismatchError",
    "UnsupportedModelError",
]


class FDBPLError(ValueError):
    """Base class of the errors fdbpl raises about its inputs."""


class ShapeError(FDBPLError):
    """A tensor argument has the wrong number of dimensions, sizes or dtype."""


class InputValueError(FDBPLError):
    """A tensor argument has the right shape but values the function cannot accept."""


class TableMismatchError(InputValueError):
    """A RIL table that was not built on the training set it is given for (other images,
    class names or few-shot draw)."""


class TableFormatError(InputValueError):
    """A table on disk is missing, truncated, of another schema, or not what was asked for."""


class SplitFileError(InputValueError):
    """A split file that is missing or not in CoOp's format; the message names the entry."""


class PickleRefusedError(InputValueError):
    """A pickle that names something other than Dassl's ``Datum`` (it could run code)."""


class UnsupportedModelError(FDBPLError):
    """The model has no text (or image) tower that fdbpl knows how to drive."""
