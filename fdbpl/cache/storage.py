"""Atomic writes, file digests and pickle-free column reads for the table's (and the run's) files.

Columns are written through memory maps in a shard's ``.partial`` folder, which is
renamed when complete (see :mod:`fdbpl.cache.shards`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["file_digest", "json_bytes", "load_column", "write_bytes_atomic", "write_json_atomic"]


def json_bytes(data: Any) -> bytes:
    """The bytes fdbpl writes for a JSON document (sorted keys, one space of indent)."""
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write to a temporary file beside ``path``, sync it, then rename it into place.

    The file gets the permissions of any new file (0666 less the umask), not the 0600 of
    a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, json_bytes(data))


def file_digest(path: str | os.PathLike[str], on_read: Callable[[int], object] | None = None) -> str:
    """SHA-256 of a file's bytes, read in chunks; ``on_read(n)`` is told each chunk's size."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            if on_read is not None:
                on_read(len(chunk))
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_column(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map one ``.npy`` column read-only; object (pickled) arrays are refused."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
