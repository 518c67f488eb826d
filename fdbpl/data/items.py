"""One labelled image of a dataset split, CoOp's class-name normalisation and base/new halves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from fdbpl.errors import InputValueError

__all__ = ["SUBSETS", "Item", "check_one_name_per_label", "coop_classname", "subsample_classes"]

#: The class subsets of the base-to-new protocol.
SUBSETS = ("all", "base", "new")


@dataclass(frozen=True)
class Item:
    """What Dassl's ``Datum`` holds: an image path, its label, domain and class name."""

    impath: str
    label: int
    classname: str
    domain: int = 0


def check_one_name_per_label(
    items: Sequence[tuple[str, Item]], source: str, error: type[Exception] = InputValueError
) -> None:
    """Refuse a label written with two class names (a reader would keep one silently).

    Args:
        items: ``(where, item)`` pairs, ``where`` naming the entry (``"train[3]"``).
        source: the file read, first in the message.
        error: the caller's error type.
    """
    first: dict[int, tuple[str, str]] = {}
    for where, item in items:
        name, seen_at = first.setdefault(item.label, (item.classname, where))
        if name != item.classname:
            raise error(
                f"{source}: label {item.label} is {name!r} at {seen_at} but {item.classname!r} at {where}; "
                "each label has one class name"
            )


def coop_classname(name: str) -> str:
    """A class name as CoOp's prompt learner reads it: ``_`` is a space (``"american_bulldog"``
    -> ``"american bulldog"``).

    Example:
        >>> from fdbpl.data import coop_classname
        >>> coop_classname("american_bulldog")
        'american bulldog'
    """
    return name.replace("_", " ")


def subsample_classes(*splits: Sequence[Item], subsample: str = "all") -> list[list[Item]]:
    """CoOp's ``subsample_classes``: keep the base or the new half of the classes, relabelled.

    The labels present in the first split are sorted; the first ``ceil(n / 2)`` are the
    base classes, the rest the new ones. Every split keeps the items of the chosen half,
    in order, with labels renumbered 0, 1, ... in the sorted order.

    Args:
        splits: item lists (train first: it decides the classes).
        subsample: ``"all"``, ``"base"`` or ``"new"``.

    Example:
        >>> from fdbpl.data import Item, subsample_classes
        >>> items = [Item("a.jpg", 0, "cat"), Item("b.jpg", 2, "dog"), Item("c.jpg", 1, "owl")]
        >>> [(i.impath, i.label) for i in subsample_classes(items, subsample="new")[0]]
        [('b.jpg', 0)]
    """
    if subsample not in SUBSETS:
        raise InputValueError(f"subsample: expected one of {list(SUBSETS)}, got {subsample!r}")
    if subsample == "all" or not splits:
        return [list(split) for split in splits]
    labels = sorted({item.label for item in splits[0]})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {old: new for new, old in enumerate(selected)}
    return [
        [replace(item, label=relabel[item.label]) for item in split if item.label in relabel]
        for split in splits
    ]
