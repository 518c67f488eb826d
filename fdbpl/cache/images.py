"""Image folders: scanning, class names, decoding to uint8 tensors."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fdbpl.errors import InputValueError

__all__ = ["IMAGE_EXTENSIONS", "ImageRecord", "ScanResult", "decode_image", "list_hash", "scan_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass(frozen=True)
class ImageRecord:
    """One image of the table: its path relative to the root, size and folder label."""

    path: str
    width: int
    height: int
    label: int

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "width": self.width, "height": self.height, "label": self.label}


@dataclass
class ScanResult:
    classnames: list[str]
    images: list[ImageRecord]
    converted: list[str]  # decoded in another mode (L, RGBA, P, CMYK, ...) and converted to RGB
    skipped: list[tuple[str, str]]  # (path, reason): unreadable files


def list_hash(items: list[object]) -> str:
    """SHA-256 of a list's canonical JSON text (ordered)."""
    return hashlib.sha256(json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def decode_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decode an image file to a ``(3, H, W)`` uint8 RGB tensor (other modes are converted)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        array = np.asarray(rgb, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _classnames_from(root: Path, folders: list[str], classnames: list[str] | None) -> list[str]:
    if classnames is None:
        return [f.replace("_", " ") for f in folders]
    if len(classnames) != len(folders):
        raise InputValueError(
            f"classnames: got {len(classnames)} names for {len(folders)} class folders in {root}"
        )
    return list(classnames)


def scan_image_folder(
    root: str | os.PathLike[str], classnames: list[str] | None = None, check: bool = True
) -> ScanResult:
    """List an image-folder tree: one sub-folder per class, in sorted order.

    Class names are the folder names with ``_`` read as a space, unless ``classnames``
    gives them (one per folder, in sorted folder order). With ``check`` every image is
    decoded once: unreadable files are skipped and reported, non-RGB ones are reported
    as converted. Nothing is skipped silently.

    Raises:
        InputValueError: a root that is not a folder, no class folders, an empty class
            folder, or a class name list of the wrong length.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise InputValueError(f"images: {root} is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputValueError(f"images: {root} has no class sub-folders (expected ROOT/CLASS/IMAGE)")
    names = _classnames_from(root, folders, classnames)
    images: list[ImageRecord] = []
    converted: list[str] = []
    skipped: list[tuple[str, str]] = []
    for label, folder in enumerate(folders):
        files = sorted(
            p for p in (root / folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise InputValueError(
                f"images: class folder {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        for p in files:
            rel = p.relative_to(root).as_posix()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with Image.open(p) as img:
                        if check:
                            img.load()
                        width, height = img.size
                        mode = img.mode
            except Exception as e:  # PIL raises many types for broken files
                skipped.append((rel, f"{type(e).__name__}: {e}"))
                continue
            if mode != "RGB":
                converted.append(rel)
            images.append(ImageRecord(rel, width, height, label))
    return ScanResult(names, images, converted, skipped)
