"""The life of a shard, and of the table folder while a build writes it.

A shard in progress is ``shard-NNNNN.partial/``: memory-mapped columns plus a per-image
``done`` flag that is set only after the image's rows are written. It is created under
``shard-NNNNN.creating-PID/`` and renamed, so a half-created folder is never taken for
one in progress. A finished shard's columns are synced, their SHA-256 written to its
``sha256.json``, and the folder renamed to ``shard-NNNNN/``: nothing is read as complete
before its rename.

One build at a time writes a table: it holds an exclusive lock on ``OUT/.lock`` (released
by the system if the process dies, so a killed build never blocks the next one). With
the lock held, leftovers of a killed build (``*.creating-PID/`` folders, temporary
``.NAME.*.tmp`` files) are stale and are removed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from fdbpl.cache.manifest import (
    BUILD_SETTINGS,
    CHECKSUM,
    MANIFEST,
    column_specs,
    read_json_file,
    shard_name,
)
from fdbpl.cache.storage import file_digest, write_json_atomic
from fdbpl.errors import TableFormatError

__all__ = [
    "LOCK",
    "SHARD_CHECKSUMS",
    "BuildLock",
    "clean_stale",
    "finish_shard",
    "open_partial",
    "shard_checksums",
]

#: The lock file a build holds in its table folder (removed when the build ends).
LOCK = ".lock"
#: Each finished shard's file of SHA-256 digests, one per column file.
SHARD_CHECKSUMS = "sha256.json"
_PARTIAL = ".partial"
_CREATING = ".creating-"


class BuildLock:
    """An exclusive lock on ``OUT/.lock`` for the life of one build (POSIX ``flock``).

    Raises:
        TableFormatError: another build holds it; the message names its process id.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        self._fd: int | None = None

    def __enter__(self) -> BuildLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise TableFormatError(
                f"out: another build (process {holder}) is writing {self.path.parent}; "
                "wait for it to finish or choose another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # still holding it: nobody takes it half-removed
            os.close(self._fd)
            self._fd = None


def clean_stale(out: Path) -> None:
    """Remove what a killed build left behind: half-created shards and temporary files.

    Only call it while holding the :class:`BuildLock`.
    """
    temporary = tuple(f".{name}." for name in (MANIFEST, BUILD_SETTINGS, CHECKSUM))
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith("shard-") and _CREATING in p.name:
            shutil.rmtree(p)
        elif p.is_file() and p.name.startswith(temporary) and p.name.endswith(".tmp"):
            p.unlink()
        elif p.is_dir() and p.name.startswith("shard-"):
            for q in p.glob(f".{SHARD_CHECKSUMS}.*.tmp"):
                q.unlink()


def clear(out: Path) -> None:
    """Remove a table (and any build of one) from ``out``, keeping other files."""
    for p in out.iterdir():
        if p.name in (MANIFEST, BUILD_SETTINGS, CHECKSUM):
            p.unlink()
        elif p.is_dir() and p.name.startswith("shard-"):
            shutil.rmtree(p)


def unknown_entries(out: Path) -> list[str]:
    """Entries of ``out`` that no build writes (a folder with them is not ours to fill)."""
    ours = (MANIFEST, BUILD_SETTINGS, CHECKSUM, LOCK)
    return sorted(p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith("shard-"))


def open_partial(out: Path, s: int, n_images: int, settings: dict[str, Any]) -> dict[str, np.memmap]:
    """Open a shard in progress (resume), or create it zero-filled under a temporary name."""
    partial = out / f"{shard_name(s)}{_PARTIAL}"
    specs = column_specs(settings, n_images * settings["crops_per_image"])
    specs["done"] = ((n_images,), "uint8")
    if partial.is_dir():
        try:
            cols = {n: np.lib.format.open_memmap(partial / f"{n}.npy", mode="r+") for n in specs}
            if all(
                cols[n].shape == shape and cols[n].dtype == np.dtype(dt) for n, (shape, dt) in specs.items()
            ):
                return cols
        except (OSError, ValueError):
            pass
        shutil.rmtree(partial)  # unusable leftovers: this shard starts again
    tmp = out / f"{shard_name(s)}{_CREATING}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n, (shape, dt) in specs.items():
        col = np.lib.format.open_memmap(tmp / f"{n}.npy", mode="w+", dtype=np.dtype(dt), shape=shape)
        col.flush()
        del col
    os.replace(tmp, partial)
    return {n: np.lib.format.open_memmap(partial / f"{n}.npy", mode="r+") for n in specs}


def finish_shard(out: Path, s: int, cols: dict[str, np.memmap]) -> None:
    """Sync a complete shard's columns, record their SHA-256, and rename it into the table."""
    for col in cols.values():
        col.flush()
    names = [f"{name}.npy" for name in cols]
    cols.clear()  # close the memory maps before hashing and renaming
    partial = out / f"{shard_name(s)}{_PARTIAL}"
    write_json_atomic(partial / SHARD_CHECKSUMS, {name: file_digest(partial / name) for name in names})
    os.replace(partial, out / shard_name(s))


def shard_checksums(out: Path, s: int) -> dict[str, str]:
    """The SHA-256 digests a finished shard recorded for its files."""
    path = out / shard_name(s) / SHARD_CHECKSUMS
    digests = read_json_file(path, "out")
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise TableFormatError(f"out: {path} is not a map of file names to SHA-256 digests")
    return digests
