"""Where a table's images came from, and whether it belongs to a given training set.

A table built from a dataset of CoOp's layout (``fdbpl build-cache --dataset``, or the
Dassl trainer from Dassl's own ``train_x``) records its draw in the manifest's ``source``:
the dataset, the split (and the split file or cached few-shot file read, relative to
``DATASET.ROOT``), the shots, the draw's seed, the class subset (CoOp's
``SUBSAMPLE_CLASSES``) and whether the draw repeated images (Dassl before 2022).
:func:`check_table_draw` compares a table with the training set a run is about to use and
names the first difference, so that a table of another draw is never used silently;
:func:`check_recorded_draw` reads the recorded draw again under a root and compares it
(``fdbpl train``, :func:`fdbpl.train.train`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fdbpl._checks import first_difference
from fdbpl.cache.table import RILTable
from fdbpl.data.items import coop_classname
from fdbpl.errors import InputValueError, TableMismatchError

__all__ = ["DRAW_FIELDS", "check_recorded_draw", "check_table_draw", "describe_source"]

#: The fields of a recorded source that decide which images a draw holds.
DRAW_FIELDS = ("dataset", "shots", "seed", "subset")


def describe_source(source: Mapping[str, Any] | None) -> str:
    """One line for a table's recorded source (``fdbpl inspect``, the Dassl trainer's log)."""
    if not source:
        return "an image folder or list (no dataset draw recorded)"
    shots = f"{source['shots']}-shot draw" if source["shots"] else "all images"
    read = source.get("fewshot_file") or source.get("split_file")
    return (
        f"{source['dataset']} {source['split']}, {shots}, seed {source['seed']}, {source['subset']} classes"
        + (", repeated images allowed" if source.get("repeat") else "")
        + (f" (read from {read})" if read else "")
    )


def _resolved(path: str | os.PathLike[str]) -> str:
    return os.path.normcase(str(Path(path).resolve()))


def check_table_draw(
    table: RILTable,
    root: str | os.PathLike[str],
    items: Iterable[tuple[str, str]],
    classnames: list[str],
    source: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a table that was not built on exactly this training set.

    Args:
        table: the opened table.
        root: the folder the table's image paths are relative to.
        items: the training set, ``(image path, class name)`` pairs (e.g. Dassl's
            ``train_x``: ``(datum.impath, datum.classname)``).
        classnames: the training set's class names by label.
        source: the draw this run uses (``dataset``, ``shots``, ``seed``, ``subset``):
            compared first with the table's recorded source, if it has one.

    Class names are compared with ``_`` read as a space (CoOp's reading).

    Raises:
        TableMismatchError: another draw, other class names, an image in one and not the
            other, or an image of another class; the message names the first difference.
    """
    recorded = table.manifest.get("source")
    if source and recorded:
        for key in DRAW_FIELDS:
            if key in source and source[key] != recorded.get(key):
                raise TableMismatchError(
                    f"table: {table.path} was drawn for {key} {recorded.get(key)!r}; this run's {key} is "
                    f"{source[key]!r}"
                )
    mine = [coop_classname(n) for n in classnames]
    theirs = [coop_classname(n) for n in table.classnames]
    if mine != theirs:
        i = first_difference(theirs, mine)
        detail = (
            f"class {i} is {theirs[i]!r} in the table, {mine[i]!r} here"
            if i < min(len(theirs), len(mine))
            else f"the table has {len(theirs)} classes, this training set {len(mine)}"
        )
        raise TableMismatchError(f"table: {table.path} was built for other class names ({detail})")
    wanted: dict[str, str] = {}
    for path, name in items:
        key = _resolved(path)
        if key in wanted:
            raise TableMismatchError(
                f"training set: {path} is drawn twice (a few-shot draw with repeated images); a table holds "
                "each image once"
            )
        wanted[key] = coop_classname(name)
    stored = {
        _resolved(Path(root) / record["path"]): theirs[record["label"]] for record in table.manifest["images"]
    }
    for path, name in sorted(wanted.items()):
        if path not in stored:
            raise TableMismatchError(
                f"table: {table.path} does not hold {path}, an image of this training set ({len(stored)} "
                f"images in the table, {len(wanted)} in the training set)"
            )
        if stored[path] != name:
            raise TableMismatchError(
                f"table: {path} is labelled {stored[path]!r} in the table, {name!r} in this training set"
            )
    extra = sorted(set(stored) - set(wanted))
    if extra:
        raise TableMismatchError(
            f"table: {table.path} holds {extra[0]}, which is not in this training set ({len(stored)} images in "
            f"the table, {len(wanted)} in the training set)"
        )


def check_recorded_draw(table: RILTable, root: str | os.PathLike[str]) -> None:
    """Refuse a table whose recorded dataset draw, read again under ``root``, is not its images.

    A table built from a dataset of CoOp's layout records its draw (dataset, split, shots,
    seed, subset, repeat); this reads that draw under ``root`` (CoOp's ``DATASET.ROOT``, the
    folder the table's paths are relative to) as CoOp would and compares it with
    :func:`check_table_draw`. A table without a recorded draw (an image folder or list), or
    built over a vocabulary (its classes are not the dataset's), is not compared.

    Raises:
        TableMismatchError: the draw under ``root`` differs from the table's images or class
            names, or cannot be read there (``root`` is not the dataset's root).
    """
    source = table.manifest.get("source")
    if not source or "dataset" not in source or source.get("vocabulary"):
        return
    from fdbpl.data import read_dataset  # the readers of CoOp's layouts, only for such tables

    try:
        data = read_dataset(
            str(source["dataset"]),
            root,
            num_shots=int(source["shots"]),
            seed=int(source["seed"]),
            subsample=str(source["subset"]),
            repeat=bool(source.get("repeat", False)),
        )
    except (InputValueError, OSError) as e:
        raise TableMismatchError(
            f"table: {table.path} holds a draw of {source['dataset']} ({describe_source(source)}), which cannot "
            f"be read under {root}; give the DATASET.ROOT it was built from ({e})"
        ) from e
    split = getattr(data, str(source.get("split", "train")))
    check_table_draw(table, root, [(item.impath, item.classname) for item in split], data.classnames)
