"""Atomic JSON writes and pickle-free column reads for the table's files.

Columns are written through memory maps in a shard's ``.partial`` folder, which is
renamed when complete (see :mod:`fdbpl.cache.build`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_column", "read_json", "write_json_atomic"]


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, sync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def read_json(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_column(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map one ``.npy`` column read-only; object (pickled) arrays are refused."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
