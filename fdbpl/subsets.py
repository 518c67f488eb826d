"""Base-to-new class splits and few-shot image selection, as in CoOp."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import numpy as np

from fdbpl.cache.scan import ScanResult
from fdbpl.errors import InputValueError

__all__ = ["Subset", "select_images", "split_classes"]

Subset = Literal["base", "new", "all"]


def split_classes(num_classes: int, subset: Subset) -> list[int]:
    """Class ids of a subset: classes in sorted order, the first half (rounded up) base, the rest new."""
    if subset not in ("base", "new", "all"):
        raise InputValueError(f"subset: expected 'base', 'new' or 'all', got {subset!r}")
    half = math.ceil(num_classes / 2)
    if subset == "base":
        return list(range(half))
    if subset == "new":
        return list(range(half, num_classes))
    return list(range(num_classes))


def select_images(
    scan: ScanResult, subset: Subset = "all", shots: int | None = None, seed: int = 0
) -> ScanResult:
    """Keep the classes of ``subset`` and, with ``shots``, ``shots`` images per class drawn with ``seed``.

    Labels are renumbered to the kept classes (0 .. C' - 1, in order); image order is kept.

    Raises:
        InputValueError: ``shots`` below 1 or above what a class holds (the class is named).
    """
    keep = split_classes(len(scan.classnames), subset)
    new_label = {old: new for new, old in enumerate(keep)}
    by_class: dict[int, list[int]] = {c: [] for c in keep}
    for i, rec in enumerate(scan.images):
        if rec.label in by_class:
            by_class[rec.label].append(i)
    chosen: set[int] = set()
    rng = np.random.default_rng(seed)
    for c, idx in by_class.items():
        if shots is None:
            chosen.update(idx)
            continue
        if shots < 1:
            raise InputValueError(f"shots: expected a positive number of images per class, got {shots}")
        if shots > len(idx):
            raise InputValueError(
                f"shots: {shots} images per class asked, but class {scan.classnames[c]!r} holds {len(idx)}"
            )
        chosen.update(int(i) for i in rng.choice(idx, size=shots, replace=False))
    images = [replace(rec, label=new_label[rec.label]) for i, rec in enumerate(scan.images) if i in chosen]
    paths = {rec.path for rec in images}
    converted = [p for p in scan.converted if p in paths]
    return ScanResult([scan.classnames[c] for c in keep], images, converted, scan.skipped)
