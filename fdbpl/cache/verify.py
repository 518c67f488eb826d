"""Checking a table's bytes against the SHA-256 recorded at build time, once per process.

A build records the SHA-256 of every column file (in each shard's checksum file and in
the manifest) and of the manifest itself. :func:`verify_table` reads every byte of the
table once and compares: a single flipped byte, a column swapped for another shard's or
another build's, an edited manifest, all are refused by name. A table verified in this
process is not read again while none of its files changed (same sizes, modification
times and inodes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fdbpl.cache.manifest import (
    CHECKSUM,
    MANIFEST,
    check_regular_file,
    check_relative_path,
    read_json_file,
)
from fdbpl.cache.shards import SHARD_CHECKSUMS
from fdbpl.cache.storage import file_digest, json_bytes
from fdbpl.errors import TableFormatError

__all__ = ["verify_table"]

#: Tables verified in this process: resolved folder -> the fingerprint of its files then.
_VERIFIED: dict[Path, tuple[Any, ...]] = {}


def _fingerprint(path: Path, manifest: dict[str, Any]) -> tuple[Any, ...]:
    """Every file's name, size, modification time and inode (reads no file's bytes)."""
    out = []
    for folder in [path] + [path / entry["name"] for entry in manifest["shards"]]:
        with os.scandir(folder) as entries:
            for e in entries:
                if folder != path or e.name in (MANIFEST, CHECKSUM):
                    s = e.stat(follow_symlinks=True)
                    out.append((folder.name, e.name, s.st_size, s.st_mtime_ns, s.st_ino, s.st_dev))
    return tuple(sorted(out))


def _verify_manifest_bytes(path: Path, read: Any) -> None:
    if not (path / CHECKSUM).exists():
        raise TableFormatError(
            f"table: {path} records no checksums (built by an older fdbpl, or {CHECKSUM} was removed); "
            "rebuild it to verify"
        )
    checksum = read_json_file(path / CHECKSUM, "table")
    recorded = checksum.get(MANIFEST) if isinstance(checksum, dict) else None
    if not isinstance(recorded, str) or (path / CHECKSUM).read_bytes() != json_bytes(checksum):
        raise TableFormatError(
            f"table: {path / CHECKSUM} is damaged or does not record the manifest's SHA-256"
        )
    if file_digest(path / MANIFEST, read) != recorded:
        raise TableFormatError(
            f"table: {path / MANIFEST} differs from its recorded SHA-256 (changed or damaged)"
        )


def _verify_shard(folder: Path, entry: dict[str, Any], read: Any) -> None:
    recorded = entry.get("sha256")
    if not recorded:
        raise TableFormatError(
            f"table: shard {entry['name']} records no checksums (built by an older fdbpl); rebuild it to verify"
        )
    files = sorted(p.name for p in folder.iterdir() if p.name != SHARD_CHECKSUMS)
    if files != sorted(recorded):
        raise TableFormatError(f"table: {folder} holds {files}, its checksums list {sorted(recorded)}")
    check_regular_file(folder / SHARD_CHECKSUMS, "table: checksum file")
    if (folder / SHARD_CHECKSUMS).read_bytes() != json_bytes(recorded):
        raise TableFormatError(f"table: {folder / SHARD_CHECKSUMS} differs from the manifest's checksums")
    for name, digest in recorded.items():
        check_relative_path(name, f"table: shard {entry['name']}")
        check_regular_file(folder / name, "table: column file")
        if file_digest(folder / name, read) != digest:
            raise TableFormatError(
                f"table: {folder / name} differs from its recorded SHA-256 (changed or damaged)"
            )


def _bar(path: Path, total: int, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=f"verifying {path.name}",
        disable=disable,
        dynamic_ncols=True,
    )


def verify_table(
    path: Path, manifest: dict[str, Any], progress: bool | None = None, force: bool = False
) -> bool:
    """Check every file of the table at ``path`` against its recorded SHA-256.

    Args:
        path: the table's folder.
        manifest: its validated manifest (names the shards and their checksums).
        progress: a progress bar over the bytes read; ``None``: when stderr is a terminal.
        force: read it even if this process verified it already.

    Returns:
        ``True`` if the table was read, ``False`` if this process had verified it already
        and none of its files changed since.

    Raises:
        TableFormatError: naming the first file whose bytes differ, or that is missing,
            extra, not a regular file, or without a recorded checksum.
    """
    key = path.resolve()
    fingerprint = _fingerprint(path, manifest)
    if not force and _VERIFIED.get(key) == fingerprint:
        return False
    total = sum(size for _, _, size, *_ in fingerprint)
    with _bar(path, total, progress) as bar:
        _verify_manifest_bytes(path, bar.update)
        for entry in manifest["shards"]:
            _verify_shard(path / entry["name"], entry, bar.update)
    _VERIFIED[key] = fingerprint
    return True
