"""CoOp's split files: ``split_zhou_*.json``, lists of ``[image path, label, class name]``."""

from __future__ import annotations

import json
import os

from fdbpl.data.items import Item, check_one_name_per_label
from fdbpl.errors import SplitFileError
from fdbpl.files import read_file_text

__all__ = ["SplitFileError", "read_split_json"]

SPLITS = ("train", "val", "test")


def read_split_json(path: str | os.PathLike[str], image_dir: str | os.PathLike[str]) -> dict[str, list[Item]]:
    """Read a CoOp split file as CoOp's ``read_split`` does: every entry's path is joined to
    ``image_dir``, its label read as an int, its class name kept as written.

    Args:
        path: the ``split_zhou_NAME.json`` file.
        image_dir: the folder its image paths are relative to (e.g. ``DATA/oxford_pets/images``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of :class:`Item`, in file order.

    Raises:
        SplitFileError: a missing, unreadable or non-regular file, a missing split, an entry
            that is not ``[relative path, integer label, class name]`` (named by split and
            index), or a label written with two class names.
    """
    text = read_file_text(path, "split file", "a JSON split file (see CoOp's DATASETS.md)", SplitFileError)
    try:
        split = json.loads(text)
    except json.JSONDecodeError as e:
        raise SplitFileError(f"split file: {path} is not a JSON split file ({e})") from None
    if not isinstance(split, dict) or any(not isinstance(split.get(s), list) for s in SPLITS):
        raise SplitFileError(f"split file: {path} must map 'train', 'val' and 'test' to lists")
    out: dict[str, list[Item]] = {}
    for name in SPLITS:
        items = []
        for i, entry in enumerate(split[name]):
            ok = (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and entry[0]
                and not os.path.isabs(entry[0])
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and entry[1] >= 0
                and isinstance(entry[2], str)
            )
            if not ok:
                raise SplitFileError(
                    f"split file: {path}: {name}[{i}] is {entry!r}, expected [relative path, label >= 0, class name]"
                )
            items.append(Item(os.path.join(str(image_dir), entry[0]), entry[1], entry[2]))
        out[name] = items
    check_one_name_per_label(
        [(f"{name}[{i}]", item) for name in SPLITS for i, item in enumerate(out[name])],
        f"split file: {path}",
        SplitFileError,
    )
    return out
