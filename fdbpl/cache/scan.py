"""Image folders: scanning, class names, decoding to uint8 tensors."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fdbpl.data.items import coop_classname
from fdbpl.errors import InputValueError, TableFormatError
from fdbpl.files import read_file_bytes, regular_file
from fdbpl.images import decode_image

if TYPE_CHECKING:
    from fdbpl.data.datasets import DatasetSplits

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "ScanResult",
    "check_distinct_classnames",
    "decode_image",
    "file_sha256",
    "read_image",
    "scan_image_folder",
    "scan_image_list",
    "scan_split",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class ImageRecord:
    """One image of the table: its path relative to the root, size, folder label and the
    SHA-256 of its file (recorded when the scan reads the files)."""

    path: str
    width: int
    height: int
    label: int
    sha256: str | None = None

    def to_json(self) -> dict[str, object]:
        record: dict[str, object] = {
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "label": self.label,
        }
        if self.sha256 is not None:
            record["sha256"] = self.sha256
        return record


@dataclass
class ScanResult:
    classnames: list[str]
    images: list[ImageRecord]
    converted: list[str]  # decoded in another mode (L, RGBA, P, CMYK, ...) and converted to RGB
    skipped: list[tuple[str, str]]  # (path, reason): unreadable files
    #: where the images were drawn from, for a dataset of CoOp's layout (see
    #: :mod:`fdbpl.cache.provenance`); ``None`` for an image folder
    source: dict[str, object] | None = None


def file_sha256(data: bytes) -> str:
    """SHA-256 of an image file's bytes, as recorded in a table's image list."""
    return hashlib.sha256(data).hexdigest()


def read_image(root: Path, record: ImageRecord) -> torch.Tensor:
    """Read, check and decode one image of a table.

    The file must lie inside ``root`` (after resolving links), decode to the recorded size
    and, where the table recorded one, have the recorded SHA-256: hashing the bytes that
    are read for decoding anyway costs a few percent of the decode, and catches another
    image saved under the same name and size.

    Raises:
        TableFormatError: naming the image and what differs.
    """
    path = root / record.path
    if not path.resolve().is_relative_to(root.resolve()):
        raise TableFormatError(f"images: {record.path} resolves outside the image folder {root}")
    data = read_file_bytes(path, "images", "the image the table was built on", TableFormatError)
    if record.sha256 is not None and file_sha256(data) != record.sha256:
        raise TableFormatError(
            f"images: {record.path} is not the image the table was built on (its SHA-256 differs)"
        )
    image = decode_image(data)
    if tuple(image.shape[1:]) != (record.height, record.width):
        raise TableFormatError(
            f"images: {record.path} is {image.shape[2]}x{image.shape[1]} pixels, the table recorded "
            f"{record.width}x{record.height}"
        )
    return image


def _classnames_from(
    root: Path, folders: list[str], classnames: list[str] | None, normalize: bool
) -> list[str]:
    if classnames is None:
        names, source = list(folders), f"the class folders of {root}"
    else:
        if len(classnames) != len(folders):
            raise InputValueError(
                f"classnames: got {len(classnames)} names for {len(folders)} class folders in {root}"
            )
        names, source = list(classnames), "classnames"
    if normalize:
        names = [coop_classname(n) for n in names]
    check_distinct_classnames(names, source)
    return names


def check_distinct_classnames(names: list[str], source: str) -> None:
    """Refuse empty, repeated or case-colliding class names: each prompt must name one class."""
    empty = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if empty:
        raise InputValueError(f"classnames: empty class name at index {empty[0]} in {source}")
    seen: dict[str, str] = {}
    for name in names:
        key = " ".join(name.casefold().split())
        if key in seen:
            kind = "repeated" if seen[key] == name else "case-colliding"
            raise InputValueError(
                f"classnames: {kind} class names {seen[key]!r} and {name!r} in {source} "
                "(the prompts could not tell them apart)"
            )
        seen[key] = name


def scan_image_folder(
    root: str | os.PathLike[str],
    classnames: list[str] | None = None,
    check: bool = True,
    normalize_classnames: bool = True,
) -> ScanResult:
    """List an image-folder tree: one sub-folder per class, in sorted order.

    Class names are the folder names, unless ``classnames`` gives them (one per folder, in
    sorted folder order), with ``_`` read as a space as CoOp reads them
    (:func:`fdbpl.data.coop_classname`; ``normalize_classnames=False`` keeps them as they are). With ``check`` every image is
    read and decoded once and the SHA-256 of its file recorded: unreadable files, file
    names that are not UTF-8 and dangling symbolic links are skipped and reported,
    non-RGB images are reported as converted. Nothing is skipped silently.

    Raises:
        InputValueError: a root that is not a folder, no class folders, an empty class
            folder, a class name list of the wrong length, or class names that repeat or
            differ only in case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputValueError(f"images: {root} is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputValueError(f"images: {root} has no class sub-folders (expected ROOT/CLASS/IMAGE)")
    names = _classnames_from(root, folders, classnames, normalize_classnames)
    scan = ScanResult(names, [], [], [])
    for label, folder in enumerate(folders):
        candidates = sorted(p for p in (root / folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        found = 0
        for p in candidates:
            rel = _relative_name(p, root)
            if rel is None:
                scan.skipped.append((_printable(p, root), "file name is not valid UTF-8"))
                continue
            if p.is_symlink() and not p.exists():
                scan.skipped.append((rel, "dangling symbolic link"))
                continue
            if not p.is_file():
                scan.skipped.append((rel, "not a regular file"))
                continue
            found += 1
            _add_image(scan, p, rel, label, check)
        if not found:
            raise InputValueError(
                f"images: class folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
    return scan


def scan_image_list(
    root: str | os.PathLike[str], images: list[tuple[str, int]], classnames: list[str], check: bool = True
) -> ScanResult:
    """Like :func:`scan_image_folder` for a given list of ``(path, label)`` under ``root``
    (a dataset read from its own layout, :func:`fdbpl.data.read_dataset`), in that order.

    Raises:
        InputValueError: a path outside ``root`` or missing, a label outside the class
            names, or class names that repeat or differ only in case.
    """
    root = Path(root)
    check_distinct_classnames(classnames, "the dataset's class names")
    scan = ScanResult(list(classnames), [], [], [])
    for path, label in images:
        p = Path(path)
        try:
            rel = p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise InputValueError(
                f"images: {path} is not under {root} (a table holds paths inside its root)"
            ) from None
        if not 0 <= label < len(classnames):
            raise InputValueError(f"images: {path} has label {label}, outside the {len(classnames)} classes")
        regular_file(p, "images", "an image file")
        _add_image(scan, root / rel, rel, label, check)
    return scan


def scan_split(
    data: DatasetSplits,
    root: str | os.PathLike[str],
    split: str,
    *,
    normalize_classnames: bool = True,
    check: bool = True,
) -> ScanResult:
    """One split of a dataset read from its own layout (:func:`fdbpl.data.read_dataset`) as
    a scan: :func:`scan_image_list` of its items, with the dataset's class names read as
    CoOp reads them (``_`` as a space) unless ``normalize_classnames`` is ``False``."""
    names = [coop_classname(n) for n in data.classnames] if normalize_classnames else list(data.classnames)
    items = getattr(data, split)
    scan = scan_image_list(root, [(item.impath, item.label) for item in items], names, check=check)
    scan.source = {**data.source, "split": split}
    return scan


def _add_image(scan: ScanResult, p: Path, rel: str, label: int, check: bool) -> None:
    """Read one image's size (and with ``check`` decode it and hash its file) into ``scan``."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = p.read_bytes() if check else None
            with Image.open(io.BytesIO(data) if data is not None else p) as img:
                if check:
                    img.load()
                width, height = img.size
                mode = img.mode
    except Exception as e:  # PIL raises many types for broken files
        scan.skipped.append((rel, f"{type(e).__name__}: {e}"))
        return
    if mode != "RGB":
        scan.converted.append(rel)
    digest = file_sha256(data) if data is not None else None
    scan.images.append(ImageRecord(rel, width, height, label, digest))


def _relative_name(path: Path, root: Path) -> str | None:
    """The path relative to the root as UTF-8 text, or None for a name that is not UTF-8."""
    rel = path.relative_to(root).as_posix()
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes surface as surrogate escapes
        return None
    return rel


def _printable(path: Path, root: Path) -> str:
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")
