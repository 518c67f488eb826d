"""The RIL table's manifest: what was built, how, and from what. JSON, never pickled."""

from __future__ import annotations

from typing import Any

import numpy as np

from fdbpl.errors import InputValueError

__all__ = [
    "BUILD_SETTINGS",
    "COLUMNS",
    "MANIFEST",
    "SCHEMA_VERSION",
    "TableFormatError",
    "bytes_per_region",
    "column_specs",
    "settings_of",
    "validate_manifest",
]

SCHEMA_VERSION = 1

#: The manifest, written last: a table without it is not complete.
MANIFEST = "manifest.json"
#: The settings of a build in progress, to refuse resuming it with others.
BUILD_SETTINGS = "build.json"

#: Per-region columns, in file order: name -> what it holds. ``fill`` exists for MS only.
COLUMNS = {
    "box": "(R, 4) crop box (top, left, height, width) in source pixels",
    "flip": "(R,) uint8, 1 where the crop is mirrored left-right",
    "indices": "(R, K) Top-K class ids, uint16 for C <= 65535 else int32",
    "values": "(R, K) float16 Top-K probabilities (MS: the teacher's; MR: re-normalised)",
    "fill": "(R,) float32 probability of each class outside the Top-K (MS only)",
    "weight": "(R,) uint16 information weight w of the teacher's full distribution, w = q / 65535",
}

#: Fixed-point scale of the stored information weight.
WEIGHT_SCALE = 65535

_REQUIRED = {
    "schema_version": int,
    "num_classes": int,
    "topk": int,
    "strategy": str,
    "crops_per_image": int,
    "shard_size": int,
    "crops": dict,
    "teacher": dict,
    "seed": int,
    "classnames": list,
    "classnames_sha256": str,
    "images": list,
    "images_sha256": str,
    "dtypes": dict,
}


class TableFormatError(InputValueError):
    """A table on disk is missing, truncated, of another schema, or not what was asked for."""


def column_specs(settings: dict[str, Any], rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each column's shape for ``rows`` regions and its dtype name, from a manifest's settings."""
    k = settings["topk"]
    d = settings["dtypes"]
    specs = {
        "box": ((rows, 4), d["box"]),
        "flip": ((rows,), d["flip"]),
        "indices": ((rows, k), d["indices"]),
        "values": ((rows, k), d["values"]),
        "weight": ((rows,), d["weight"]),
    }
    if settings["strategy"] == "ms":
        specs["fill"] = ((rows,), d["fill"])
    return specs


def bytes_per_region(settings: dict[str, Any]) -> int:
    """Bytes one region takes over all its columns."""
    return sum(
        int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in column_specs(settings, 1).values()
    )


def settings_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that a build's command and inputs determine (no shard list)."""
    return {k: v for k, v in manifest.items() if k != "shards"}


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise TableFormatError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TableFormatError(
            f"{where}: schema version {version!r}, this fdbpl reads version {SCHEMA_VERSION}"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise TableFormatError(f"{where}: field {key!r} missing or not a {kind.__name__}")
    if manifest["strategy"] not in ("mr", "ms"):
        raise TableFormatError(f"{where}: strategy {manifest['strategy']!r} is not 'mr' or 'ms'")
    if not 1 <= manifest["topk"] <= manifest["num_classes"]:
        raise TableFormatError(f"{where}: topk {manifest['topk']} outside [1, {manifest['num_classes']}]")
    if len(manifest["classnames"]) != manifest["num_classes"]:
        raise TableFormatError(
            f"{where}: {len(manifest['classnames'])} class names for num_classes {manifest['num_classes']}"
        )
    return manifest
