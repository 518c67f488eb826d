"""The exceptions fdbpl raises.

Every error about user input is a :class:`ValueError`, so ``except ValueError`` keeps
working for callers that do not know about fdbpl; the subclasses let a caller tell a
bad shape from a bad value.
"""

from __future__ import annotations

__all__ = ["FDBPLError", "InputValueError", "ShapeError", "TableMismatchError"]


class FDBPLError(ValueError):
    """Base class of the errors fdbpl raises about its inputs."""


class ShapeError(FDBPLError):
    """A tensor argument has the wrong number of dimensions, sizes or dtype."""


class InputValueError(FDBPLError):
    """A tensor argument has the right shape but values the function cannot accept."""


class TableMismatchError(InputValueError):
    """A RIL table that was not built on the training set it is given for (other images,
    class names or few-shot draw)."""
