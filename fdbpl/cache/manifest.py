"""The RIL table's manifest: what was built, how, and from what. JSON, never pickled."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np

import fdbpl
from fdbpl.cache.codec import WEIGHT_SCALE, column_dtypes
from fdbpl.cache.crops import INTERPOLATION
from fdbpl.cache.storage import json_bytes, write_bytes_atomic, write_json_atomic
from fdbpl.errors import TableFormatError
from fdbpl.files import read_file_text, regular_file
from fdbpl.sparsify.topk import STRATEGIES

if TYPE_CHECKING:
    from fdbpl.cache.crops import CropSampler
    from fdbpl.cache.scan import ScanResult
    from fdbpl.cache.student import StudentFeatures
    from fdbpl.cache.teacher import Teacher

__all__ = [
    "BUILD_SETTINGS",
    "CHECKSUM",
    "COLUMNS",
    "MANIFEST",
    "SCHEMA_VERSION",
    "TableFormatError",
    "bytes_per_region",
    "check_regular_file",
    "check_relative_path",
    "check_shards",
    "column_names",
    "column_specs",
    "list_hash",
    "read_json_file",
    "settings_of",
    "shard_name",
    "table_settings",
    "validate_manifest",
    "write_manifest",
]

SCHEMA_VERSION = 1

#: The manifest, written last: a table without it is not complete.
MANIFEST = "manifest.json"
#: The settings of a build in progress, to refuse resuming it with others.
BUILD_SETTINGS = "build.json"
#: The SHA-256 of the manifest file's bytes, written just before it (``verify`` reads it).
CHECKSUM = "checksum.json"

#: Per-region columns, in file order: name -> what it holds. ``fill`` exists for MS only.
COLUMNS = {
    "box": "(R, 4) crop box (top, left, height, width) in source pixels",
    "flip": "(R,) uint8, 1 where the crop is mirrored left-right",
    "indices": "(R, K) Top-K class ids, uint16 for C <= 65535 else int32",
    "values": "(R, K) float16 Top-K probabilities (MS: the teacher's; MR: re-normalised)",
    "fill": "(R,) float32 probability of each class outside the Top-K (MS only)",
    "weight": "(R,) uint16 information weight w of the teacher's full distribution, w = q / 65535",
    "features": "(R, D) float16 L2-normalised student image feature of the crop (tables built with a student)",
}


#: The dtypes a column may have (the ones a build writes).
_DTYPES = {
    "box": ("uint16", "int32"),
    "flip": ("uint8",),
    "indices": ("uint16", "int32"),
    "values": ("float16",),
    "fill": ("float32",),
    "weight": ("uint16",),
    "features": ("float16",),
}

#: The largest image side a table may record (int32 boxes).
_MAX_SIDE = np.iinfo(np.int32).max

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


def column_specs(settings: dict[str, Any], rows: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each column's shape for ``rows`` regions and its dtype name, from a manifest's settings."""
    k = settings["topk"]
    widths = {"box": (4,), "indices": (k,), "values": (k,)}
    if "student" in settings:
        widths["features"] = (settings["student"]["feature_dim"],)
    return {
        name: ((rows, *widths.get(name, ())), settings["dtypes"][name]) for name in column_names(settings)
    }


def bytes_per_region(settings: dict[str, Any]) -> int:
    """Bytes one region takes over all its columns."""
    return sum(
        int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in column_specs(settings, 1).values()
    )


def table_settings(
    scan: ScanResult,
    teacher: Teacher,
    topk: int,
    strategy: str,
    crops_per_image: int,
    sampler: CropSampler,
    shard_size: int,
    student: StudentFeatures | None = None,
) -> dict[str, Any]:
    """Everything a manifest records except its shards: what a build's command and inputs
    determine (a build with the same settings finishes or reuses the same table)."""
    c = len(scan.classnames)
    largest = max(max(r.width, r.height) for r in scan.images)
    images = [r.to_json() for r in scan.images]
    return {
        "schema_version": SCHEMA_VERSION,
        "num_classes": c,
        "topk": topk,
        "strategy": strategy,
        "crops_per_image": crops_per_image,
        "shard_size": shard_size,
        "crops": {
            "kind": "random_resized_crop",
            "scale": list(sampler.scale),
            "ratio": list(sampler.ratio),
            "flip_probability": 0.5,
            "interpolation": INTERPOLATION,
            "antialias": True,
            "order": "crop, resize, flip, normalise",
        },
        "teacher": {
            **teacher.description,
            "image_size": teacher.image_size,
            "mean": list(teacher.mean),
            "std": list(teacher.std),
        },
        **({"student": student.manifest_entry()} if student is not None else {}),
        **({"source": dict(scan.source)} if scan.source else {}),
        "seed": sampler.seed,
        "classnames": list(scan.classnames),
        "classnames_sha256": list_hash(list(scan.classnames)),
        "images": images,
        "images_sha256": list_hash([[r.path, r.width, r.height] for r in scan.images]),
        "weight_scale": WEIGHT_SCALE,
        "dtypes": column_dtypes(c, largest, strategy, student is not None),
        "skipped": [list(s) for s in scan.skipped],
        "converted": list(scan.converted),
        "fdbpl_version": fdbpl.__version__,
    }


def write_manifest(out: Path, settings: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    """Write the manifest (a build's last step), with the SHA-256 of its bytes written first."""
    data = json_bytes({**settings, "shards": shards})
    write_json_atomic(out / CHECKSUM, {MANIFEST: hashlib.sha256(data).hexdigest()})
    write_bytes_atomic(out / MANIFEST, data)
    (out / BUILD_SETTINGS).unlink(missing_ok=True)


def settings_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest that a build's command and inputs determine (no shard list)."""
    return {k: v for k, v in manifest.items() if k != "shards"}


def list_hash(items: list[object]) -> str:
    """SHA-256 of a list's canonical JSON text (ordered)."""
    return hashlib.sha256(json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file of the table, or a :class:`TableFormatError` naming it (never a raw
    ``JSONDecodeError``, ``UnicodeDecodeError`` or a hang on a FIFO)."""
    text = read_file_text(path, what, "a JSON file of the table", TableFormatError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TableFormatError(f"{what}: {path} is not valid JSON ({e})") from None


def check_regular_file(path: Path, what: str) -> None:
    """Refuse a missing path or one that is not a regular file (a FIFO would block a read)."""
    regular_file(path, what, "a file of the table", TableFormatError)


def check_relative_path(path: Any, where: str) -> str:
    """An image path as a table may hold it: relative, inside the image folder, no ``..``."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise TableFormatError(f"{where}: expected a relative path, got {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or PureWindowsPath(path).is_absolute() or PureWindowsPath(path).drive:
        raise TableFormatError(
            f"{where}: path {path!r} is absolute; a table holds paths relative to its image folder"
        )
    if any(part in ("..", "") for part in path.split("/")) or ".." in PureWindowsPath(path).parts:
        raise TableFormatError(f"{where}: path {path!r} leaves the image folder ('..') or is malformed")
    return path


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _check_images(manifest: dict[str, Any], where: str) -> None:
    c = manifest["num_classes"]
    for i, rec in enumerate(manifest["images"]):
        field = f"{where}: images[{i}]"
        if not isinstance(rec, dict):
            raise TableFormatError(f"{field}: expected an object, got {type(rec).__name__}")
        check_relative_path(rec.get("path"), field)
        for key in ("width", "height"):
            if not _is_int(rec.get(key)) or not 1 <= rec[key] <= _MAX_SIDE:
                raise TableFormatError(f"{field}: {key} {rec.get(key)!r} is not a size in pixels")
        if not _is_int(rec.get("label")) or not 0 <= rec["label"] < c:
            raise TableFormatError(f"{field}: label {rec.get('label')!r} is not a class id in [0, {c})")
        if "sha256" in rec and not _is_sha256(rec["sha256"]):
            raise TableFormatError(f"{field}: sha256 {rec['sha256']!r} is not a SHA-256 digest")
    paths = [rec["path"] for rec in manifest["images"]]
    if len(set(paths)) != len(paths):
        raise TableFormatError(f"{where}: images list a path twice")
    if (
        list_hash([[r["path"], r["width"], r["height"]] for r in manifest["images"]])
        != manifest["images_sha256"]
    ):
        raise TableFormatError(
            f"{where}: images do not match their stored images_sha256 (the list was changed)"
        )


def _check_dtypes(manifest: dict[str, Any], where: str) -> None:
    dtypes = manifest["dtypes"]
    for name in column_names(manifest):
        allowed = _DTYPES[name]
        if dtypes.get(name) not in allowed:
            raise TableFormatError(
                f"{where}: dtype {dtypes.get(name)!r} of column {name!r} is not one of {list(allowed)}"
            )
    if dtypes["indices"] == "uint16" and manifest["num_classes"] > np.iinfo(np.uint16).max + 1:
        raise TableFormatError(f"{where}: uint16 indices cannot hold {manifest['num_classes']} classes")


def check_shards(manifest: dict[str, Any], where: str) -> None:
    """The shard list: plain, distinct ``shard-NNNNN`` names covering the images in order."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise TableFormatError(f"{where}: field 'shards' missing or not a list")
    n, size = len(manifest["images"]), manifest["shard_size"]
    if len(shards) != -(-n // size):
        raise TableFormatError(f"{where}: {len(shards)} shards cannot hold {n} images of {size} per shard")
    for s, entry in enumerate(shards):
        if not isinstance(entry, dict):
            raise TableFormatError(f"{where}: shards[{s}] is not an object")
        want = {"name": shard_name(s), "first_image": s * size, "num_images": min(size, n - s * size)}
        for key, value in want.items():
            if entry.get(key) != value:
                raise TableFormatError(
                    f"{where}: shards[{s}] has {key} {entry.get(key)!r}, expected {value!r} "
                    "(shards are plain names inside the table, in order)"
                )
        checksums = entry.get("sha256")
        if checksums is not None and (
            not isinstance(checksums, dict) or not all(_is_sha256(v) for v in checksums.values())
        ):
            raise TableFormatError(f"{where}: shards[{s}] sha256 is not a map of file names to digests")


def shard_name(s: int) -> str:
    """The folder name of shard ``s``."""
    return f"shard-{s:05d}"


def column_names(settings: dict[str, Any]) -> list[str]:
    """The stored columns of a table with these settings (its manifest), in file order:
    ``fill`` for MS tables only, ``features`` for tables built with a student."""
    skip = {"fill"} if settings["strategy"] != "ms" else set()
    if "student" not in settings:
        skip.add("features")
    return [name for name in COLUMNS if name not in skip]


def _check_student(manifest: dict[str, Any], where: str) -> None:
    student = manifest.get("student")
    if student is None:
        return
    if not isinstance(student, dict):
        raise TableFormatError(f"{where}: field 'student' is not an object")
    dim, size = student.get("feature_dim"), student.get("image_size")
    if not _is_int(dim) or not 1 <= dim <= 1 << 20:
        raise TableFormatError(f"{where}: student feature_dim {dim!r} is not a feature width")
    if not _is_int(size) or size < 1:
        raise TableFormatError(f"{where}: student image_size {size!r} is not a size in pixels")
    if not _is_sha256(student.get("image_tower_sha256")):
        raise TableFormatError(f"{where}: student image_tower_sha256 is not a SHA-256 digest")


#: What a table built from a dataset of CoOp's layout records of its draw, and their types.
SOURCE_FIELDS = {"dataset": str, "split": str, "shots": int, "seed": int, "subset": str, "repeat": bool}


def _check_source(manifest: dict[str, Any], where: str) -> None:
    source = manifest.get("source")
    if source is None:
        return
    if not isinstance(source, dict):
        raise TableFormatError(f"{where}: source is not a JSON object")
    for key, kind in SOURCE_FIELDS.items():
        value = source.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TableFormatError(f"{where}: source field {key!r} missing or not a {kind.__name__}")
    for key in ("split_file", "fewshot_file"):
        if key in source:
            check_relative_path(source[key], f"{where}: source {key}")


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """Check a manifest's fields, types, sizes, hashes and paths; raise a
    :class:`TableFormatError` naming the first thing wrong."""
    if not isinstance(manifest, dict):
        raise TableFormatError(f"{where}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise TableFormatError(
            f"{where}: schema version {version!r}, this fdbpl reads version {SCHEMA_VERSION}"
        )
    for key, kind in _REQUIRED.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TableFormatError(f"{where}: field {key!r} missing or not a {kind.__name__}")
    for key in ("num_classes", "crops_per_image", "shard_size"):
        if manifest[key] < 1:
            raise TableFormatError(f"{where}: {key} {manifest[key]} is not a positive count")
    if manifest["seed"] < 0:
        raise TableFormatError(f"{where}: seed {manifest['seed']} is negative")
    if manifest["strategy"] not in STRATEGIES:
        raise TableFormatError(f"{where}: strategy {manifest['strategy']!r} is not 'mr' or 'ms'")
    if not 1 <= manifest["topk"] <= manifest["num_classes"]:
        raise TableFormatError(f"{where}: topk {manifest['topk']} outside [1, {manifest['num_classes']}]")
    names = manifest["classnames"]
    if len(names) != manifest["num_classes"] or not all(isinstance(n, str) for n in names):
        raise TableFormatError(f"{where}: {len(names)} class names for num_classes {manifest['num_classes']}")
    if list_hash(names) != manifest["classnames_sha256"]:
        raise TableFormatError(
            f"{where}: classnames do not match their stored classnames_sha256 (the list was changed)"
        )
    _check_images(manifest, where)
    _check_student(manifest, where)
    _check_source(manifest, where)
    _check_dtypes(manifest, where)
    image_size = manifest["teacher"].get("image_size")
    if not _is_int(image_size) or image_size < 1:
        raise TableFormatError(f"{where}: teacher image_size {image_size!r} is not a size in pixels")
    return manifest
