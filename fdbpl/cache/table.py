"""Reading the RIL table: memory-mapped columns, validated against the manifest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fdbpl._checks import first_difference
from fdbpl.cache.codec import decode_labels, decode_weights
from fdbpl.cache.manifest import (
    BUILD_SETTINGS,
    MANIFEST,
    bytes_per_region,
    check_regular_file,
    check_shards,
    column_specs,
    read_json_file,
    validate_manifest,
)
from fdbpl.cache.scan import ImageRecord
from fdbpl.cache.storage import load_column
from fdbpl.cache.verify import verify_table
from fdbpl.data.items import coop_classname
from fdbpl.errors import InputValueError, TableFormatError
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["RILTable", "Regions"]


@dataclass(frozen=True)
class Regions:
    """Stored regions (:meth:`RILTable.regions`): which images, which crops, and what the
    teacher said of them."""

    ids: np.ndarray  # (N,) int64 region ids
    image_index: np.ndarray  # (N,) int64, the image of each region
    boxes: np.ndarray  # (N, 4) int64 crop boxes (top, left, height, width) in source pixels
    flips: np.ndarray  # (N,) bool, mirrored left-right
    labels: SparseSoftLabels  # (N, K) the teacher's Top-K labels
    weights: torch.Tensor  # (N,) float32 information weights (Eq. 6)
    features: torch.Tensor | None = None  # (N, D) float16 student image features, if stored

    def __len__(self) -> int:
        return len(self.ids)


def _open_column(file: Path, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Memory-map one column, refusing anything but a C-order array of this shape and dtype."""
    check_regular_file(file, "table: column file")
    try:
        col = load_column(file)
    except OSError:
        raise
    except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, TokenError, ...
        raise TableFormatError(f"table: column file {file} is unreadable or truncated ({e})") from None
    if col.shape != shape or col.dtype != np.dtype(dtype):
        raise TableFormatError(
            f"table: {file} holds {col.dtype}{list(col.shape)}, expected {dtype}{list(shape)}"
        )
    if col.ndim > 1 and not col.flags.c_contiguous:
        raise TableFormatError(f"table: {file} is stored in Fortran order; fdbpl writes and reads C order")
    return col


def _first_difference(theirs: Sequence[Any], mine: Sequence[Any]) -> str:
    i = first_difference(theirs, mine)
    if i < min(len(theirs), len(mine)):
        return f"first difference at index {i}: {theirs[i]!r} in the table vs {mine[i]!r} given"
    return f"the table has {len(theirs)}, {len(mine)} given"


class RILTable:
    """A built RIL table, opened read-only with memory-mapped columns (no pickle).

    Use :meth:`open`. Regions are numbered image by image: region ``i`` belongs to image
    ``i // crops_per_image``.

    Attributes:
        manifest: the table's manifest (JSON).
    """

    def __init__(self, path: Path, manifest: dict[str, Any], shards: list[dict[str, np.ndarray]]) -> None:
        self.path = path
        self.manifest = manifest
        self._shards = shards
        self._rows_per_shard = manifest["shard_size"] * manifest["crops_per_image"]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        classnames: Sequence[str] | None = None,
        images: Sequence[str] | None = None,
        verify: bool = False,
        normalize_classnames: bool = True,
    ) -> RILTable:
        """Open and validate a table.

        Opening always checks the manifest (fields, types, sizes, dtypes, the stored
        SHA-256 of the class names and of the image list, image paths that stay inside the
        image folder, plain shard names) and every column file's header (a regular file,
        its shape and dtype, C order). ``verify`` also reads every byte: each file's
        SHA-256 against the one recorded at build time, so a single flipped byte anywhere
        in the table is found (this reads the whole table once).

        Args:
            path: the table's folder.
            classnames: if given, the class names the table must have been built for.
            images: if given, the relative image paths (in order) it must have been built on.
            verify: check every file's SHA-256 (:meth:`verify`; opening alone does not).
            normalize_classnames: compare ``classnames`` with ``_`` read as a space on both
                sides (CoOp's reading: Dassl's ``american_bulldog`` is the table's
                ``american bulldog``); ``False`` compares them exactly.

        Raises:
            TableFormatError: naming the field or file: no manifest (a build that never
                finished), another schema version, a malformed or tampered manifest, a
                missing, truncated or non-regular column file, wrong dtypes, lengths or
                memory order, class names / images that differ from the ones given (the
                message names the first difference), or a checksum that differs.
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            hint = (
                " (a build is in progress or was interrupted: run it again to finish)"
                if (path / BUILD_SETTINGS).exists()
                else ""
            )
            raise TableFormatError(f"table: {manifest_path} does not exist{hint}")
        manifest = validate_manifest(read_json_file(manifest_path, "table"), str(manifest_path))
        check_shards(manifest, str(manifest_path))
        if classnames is not None:
            given, stored = list(classnames), list(manifest["classnames"])
            if normalize_classnames:
                given, stored = [coop_classname(n) for n in given], [coop_classname(n) for n in stored]
            if given != stored:
                raise TableFormatError(
                    f"classnames: the table was built for other class names ({_first_difference(stored, given)})"
                )
        table_images = [r["path"] for r in manifest["images"]]
        if images is not None and list(images) != table_images:
            raise TableFormatError(
                f"images: the table was built on other images ({_first_difference(table_images, list(images))})"
            )
        m = manifest["crops_per_image"]
        shards = []
        for entry in manifest["shards"]:
            folder = path / entry["name"]
            specs = column_specs(manifest, entry["num_images"] * m)
            shards.append({name: _open_column(folder / f"{name}.npy", *spec) for name, spec in specs.items()})
        table = cls(path, manifest, shards)
        if verify:
            table.verify()
        return table

    def verify(self, progress: bool | None = None, force: bool = False) -> bool:
        """Read every byte of the table and check it against the SHA-256 recorded at build
        time (:func:`~fdbpl.cache.verify.verify_table`); once per process while no file
        changes. Training and :class:`~fdbpl.cache.RegionDataset` call it by default.

        Args:
            progress: a progress bar over the bytes; ``None``: when stderr is a terminal.
            force: read it even if this process verified it already.

        Returns:
            ``True`` if it read the table, ``False`` if this process had verified it already.

        Raises:
            TableFormatError: naming the first file that differs from its checksum.
        """
        return verify_table(self.path, self.manifest, progress, force)

    # -- facts --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.manifest["images"]) * self.manifest["crops_per_image"]

    @property
    def num_images(self) -> int:
        return len(self.manifest["images"])

    @property
    def crops_per_image(self) -> int:
        return int(self.manifest["crops_per_image"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def topk(self) -> int:
        return int(self.manifest["topk"])

    @property
    def strategy(self) -> str:
        return str(self.manifest["strategy"])

    @property
    def classnames(self) -> list[str]:
        return list(self.manifest["classnames"])

    @property
    def image_paths(self) -> list[str]:
        """Relative image paths, in image-index order."""
        return [r["path"] for r in self.manifest["images"]]

    @property
    def image_records(self) -> list[ImageRecord]:
        """Each image's path, size, class folder and (if recorded) SHA-256, in image-index order."""
        return [
            ImageRecord(r["path"], r["width"], r["height"], r["label"], r.get("sha256"))
            for r in self.manifest["images"]
        ]

    @property
    def image_labels(self) -> list[int]:
        """The class folder of each image, in image-index order."""
        return [int(r["label"]) for r in self.manifest["images"]]

    @property
    def bytes_per_region(self) -> int:
        return bytes_per_region(self.manifest)

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of the manifest file as it is on disk: it names the exact table (its
        settings and every column's checksum), so a run records what it was trained on."""
        return hashlib.sha256((self.path / MANIFEST).read_bytes()).hexdigest()

    @property
    def student(self) -> dict[str, Any] | None:
        """What the table records of the student whose image features it stores (``None``:
        no features): its description, ``feature_dim``, input recipe and ``image_tower_sha256``."""
        student = self.manifest.get("student")
        return dict(student) if student is not None else None

    @property
    def has_features(self) -> bool:
        """Whether the table stores the student's image feature of every region."""
        return "student" in self.manifest

    def check_student(self, model: torch.nn.Module, recipe: Any = None) -> None:
        """Refuse a student other than the one whose image features the table stores.

        Args:
            model: the student CLIP (its image tower's weights are hashed and compared).
            recipe: the student's :class:`~fdbpl.images.InputRecipe`, if known: its side,
                mean and std must be the ones the features were computed with.

        Raises:
            TableFormatError: the table stores no features, or they belong to another
                image tower or input recipe (both named).
        """
        from fdbpl.cache.student import image_tower_digest

        stored = self.student
        if stored is None:
            raise TableFormatError(
                f"table: {self.path} stores no student image features (build it with a student: "
                "fdbpl build-cache --student MODEL)"
            )
        digest = image_tower_digest(model)
        if digest != stored["image_tower_sha256"]:
            who = stored.get("name") or "another model"
            raise TableFormatError(
                f"student: the table's image features belong to another student ({who}, "
                f"{stored.get('pretrained', '?')}; image tower sha256 {stored['image_tower_sha256'][:12]}, "
                f"this student's {digest[:12]}); train with that student, encode the images instead "
                "(--image-features encode), or rebuild the table with this one"
            )
        if recipe is not None:
            theirs = (stored["image_size"], list(stored["mean"]), list(stored["std"]))
            mine = (recipe.size, list(recipe.mean), list(recipe.std))
            if theirs != mine:
                raise TableFormatError(
                    f"student: the table's image features were computed at size {theirs[0]}, mean "
                    f"{theirs[1]}, std {theirs[2]}; this run's input is size {mine[0]}, mean {mine[1]}, "
                    f"std {mine[2]}"
                )

    def __repr__(self) -> str:
        return (
            f"RILTable({str(self.path)!r}, regions={len(self)}, images={self.num_images}, "
            f"crops_per_image={self.crops_per_image}, num_classes={self.num_classes}, topk={self.topk}, "
            f"strategy={self.strategy!r}, features={self.has_features})"
        )

    # -- reads --------------------------------------------------------------------------

    def _gather(self, name: str, ids: np.ndarray) -> np.ndarray:
        shard, row = np.divmod(ids, self._rows_per_shard)
        first = self._shards[0][name]
        out = np.empty((len(ids), *first.shape[1:]), dtype=first.dtype)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self._shards[int(s)][name][row[mask]]
        return out

    def _ids(self, region_ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        ids = np.asarray(
            region_ids.cpu() if isinstance(region_ids, torch.Tensor) else region_ids, dtype=np.int64
        )
        ids = ids.reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
            raise InputValueError(
                f"region_ids: expected ids in [0, {len(self)}), got min {ids.min()} and max {ids.max()}"
            )
        return ids

    def regions(self, region_ids: Sequence[int] | np.ndarray | torch.Tensor) -> Regions:
        """Stored regions by id: the one way to read a table (``read`` is a dataset's
        per-item fast path over the raw columns).

        Args:
            region_ids: :math:`(N,)` region ids in ``[0, len(table))``.

        Returns:
            :class:`Regions`: their images, crop boxes and flips, the teacher's sparse
            labels :math:`(N, K)` and information weights :math:`(N,)`, and the student's
            image features :math:`(N, D)` float16 if the table stores them.
        """
        ids = self._ids(region_ids)
        fill = self._gather("fill", ids) if self.strategy == "ms" else None
        return Regions(
            ids=ids,
            image_index=ids // self.crops_per_image,
            boxes=self._gather("box", ids).astype(np.int64),
            flips=self._gather("flip", ids).astype(bool),
            labels=decode_labels(
                self._gather("indices", ids), self._gather("values", ids), fill, self.num_classes
            ),
            weights=torch.from_numpy(decode_weights(self._gather("weight", ids))),
            features=torch.from_numpy(self._gather("features", ids)) if self.has_features else None,
        )

    def read(self, i: int) -> dict[str, np.ndarray]:
        """One region's stored columns as they are on disk (the fast path for per-item reads).

        Returns:
            ``box`` (4,), ``flip`` (), ``indices`` (K,), ``values`` (K,) float16, ``fill``
            () float32 (0 for MR) and ``weight`` () float32, as numpy arrays; and
            ``features`` (D,) float16 for a table that stores the student's features.
        """
        i = int(i)
        if not 0 <= i < len(self):
            raise InputValueError(f"region: expected an id in [0, {len(self)}), got {i}")
        shard, row = divmod(i, self._rows_per_shard)
        cols = self._shards[shard]
        out = {
            "box": cols["box"][row],
            "flip": cols["flip"][row],
            "indices": cols["indices"][row],
            "values": cols["values"][row],
            "fill": cols["fill"][row] if "fill" in cols else np.float32(0),
            "weight": decode_weights(cols["weight"][row]),
        }
        if "features" in cols:
            out["features"] = cols["features"][row]
        return out
