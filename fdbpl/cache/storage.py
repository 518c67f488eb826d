"""Atomic, pickle-free writes and reads of the table's files."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_column", "read_json", "write_json_atomic", "write_npy_atomic"]


def _atomic_target(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_npy_atomic(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save an array as ``.npy`` (never pickled) under a temporary name, then rename it."""
    path = Path(path)
    fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_column(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map one ``.npy`` column read-only; object (pickled) arrays are refused."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
