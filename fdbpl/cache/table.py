"""Reading the RIL table: memory-mapped columns, validated against the manifest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fdbpl.cache.manifest import MANIFEST, WEIGHT_SCALE, TableFormatError, bytes_per_region, validate_manifest
from fdbpl.cache.storage import load_column, read_json
from fdbpl.errors import InputValueError
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["RILTable", "RegionRecord"]


@dataclass(frozen=True)
class RegionRecord:
    """One stored region: which image, which crop, and the teacher's labels for it."""

    region: int
    image_index: int
    box: tuple[int, int, int, int]
    flip: bool
    labels: SparseSoftLabels
    weight: float


def _first_difference(theirs: Sequence[Any], mine: Sequence[Any]) -> str:
    for i, (a, b) in enumerate(zip(theirs, mine)):
        if a != b:
            return f"first difference at index {i}: {a!r} in the table vs {b!r} given"
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
    ) -> RILTable:
        """Open and validate a table.

        Args:
            path: the table's folder.
            classnames: if given, the class names the table must have been built for.
            images: if given, the relative image paths (in order) it must have been built on.

        Raises:
            TableFormatError: no manifest (a build that never finished), another schema
                version, a missing or truncated column, wrong dtypes or lengths, or class
                names / images that differ from the ones given (the message names the
                first difference).
        """
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            hint = (
                " (a build is in progress or was interrupted: run it again to finish)"
                if (path / "build.json").exists()
                else ""
            )
            raise TableFormatError(f"table: {manifest_path} does not exist{hint}")
        manifest = validate_manifest(read_json(manifest_path), str(manifest_path))
        if classnames is not None and list(classnames) != manifest["classnames"]:
            raise TableFormatError(
                f"classnames: the table was built for other class names "
                f"({_first_difference(manifest['classnames'], list(classnames))})"
            )
        table_images = [r["path"] for r in manifest["images"]]
        if images is not None and list(images) != table_images:
            raise TableFormatError(
                f"images: the table was built on other images ({_first_difference(table_images, list(images))})"
            )
        m, k = manifest["crops_per_image"], manifest["topk"]
        dtypes = manifest["dtypes"]
        columns = ["box", "flip", "indices", "values", "weight"] + (
            ["fill"] if manifest["strategy"] == "ms" else []
        )
        widths = {"box": (4,), "indices": (k,), "values": (k,)}
        shards = []
        for entry in manifest.get("shards", []):
            folder = path / entry["name"]
            rows = entry["num_images"] * m
            cols = {}
            for name in columns:
                file = folder / f"{name}.npy"
                try:
                    col = load_column(file)
                except FileNotFoundError:
                    raise TableFormatError(f"table: column file {file} is missing") from None
                except ValueError as e:
                    raise TableFormatError(
                        f"table: column file {file} is unreadable or truncated ({e})"
                    ) from None
                want = (rows, *widths.get(name, ()))
                if col.shape != want or col.dtype != np.dtype(dtypes[name]):
                    raise TableFormatError(
                        f"table: {file} holds {col.dtype}{list(col.shape)}, expected {dtypes[name]}{list(want)}"
                    )
                cols[name] = col
            shards.append(cols)
        if sum(e["num_images"] for e in manifest.get("shards", [])) != len(manifest["images"]):
            raise TableFormatError(
                f"table: the shards of {manifest_path} do not cover its {len(manifest['images'])} images"
            )
        return cls(path, manifest, shards)

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
    def image_labels(self) -> list[int]:
        """The class folder of each image, in image-index order."""
        return [int(r["label"]) for r in self.manifest["images"]]

    @property
    def bytes_per_region(self) -> int:
        return bytes_per_region(self.manifest)

    def __repr__(self) -> str:
        return (
            f"RILTable({str(self.path)!r}, regions={len(self)}, images={self.num_images}, "
            f"crops_per_image={self.crops_per_image}, num_classes={self.num_classes}, topk={self.topk}, "
            f"strategy={self.strategy!r})"
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

    def labels(self, region_ids: Sequence[int] | np.ndarray | torch.Tensor) -> SparseSoftLabels:
        """The teacher's sparse labels of several regions, :math:`(N, K)`, float32 values."""
        ids = self._ids(region_ids)
        indices = torch.from_numpy(self._gather("indices", ids).astype(np.int64))
        values = torch.from_numpy(self._gather("values", ids))
        if self.strategy == "ms":
            fill = torch.from_numpy(self._gather("fill", ids))
        else:
            fill = torch.zeros(len(ids), dtype=torch.float32)
        return SparseSoftLabels(indices, values, fill, self.num_classes)

    def weights(self, region_ids: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Information weights :math:`w` (Eq. 6, teacher's full distribution), :math:`(N,)` float32."""
        q = self._gather("weight", self._ids(region_ids))
        return torch.from_numpy(q.astype(np.float32) / WEIGHT_SCALE)

    def boxes(self, region_ids: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Crop boxes ``(N, 4)`` (top, left, height, width) and flips ``(N,)`` bool."""
        ids = self._ids(region_ids)
        return self._gather("box", ids).astype(np.int64), self._gather("flip", ids).astype(bool)

    def read(self, i: int) -> dict[str, np.ndarray]:
        """One region's stored columns as they are on disk (the fast path for per-item reads).

        Returns:
            ``box`` (4,), ``flip`` (), ``indices`` (K,), ``values`` (K,) float16, ``fill``
            () float32 (0 for MR) and ``weight`` () float32, as numpy arrays.
        """
        i = int(i)
        if not 0 <= i < len(self):
            raise InputValueError(f"region: expected an id in [0, {len(self)}), got {i}")
        shard, row = divmod(i, self._rows_per_shard)
        cols = self._shards[shard]
        return {
            "box": cols["box"][row],
            "flip": cols["flip"][row],
            "indices": cols["indices"][row],
            "values": cols["values"][row],
            "fill": cols["fill"][row] if "fill" in cols else np.float32(0),
            "weight": np.float32(cols["weight"][row]) / np.float32(WEIGHT_SCALE),
        }

    def region(self, i: int) -> RegionRecord:
        """One region's record."""
        ids = self._ids([i])
        box, flip = self.boxes(ids)
        return RegionRecord(
            region=int(i),
            image_index=int(i) // self.crops_per_image,
            box=tuple(int(v) for v in box[0]),  # type: ignore[arg-type]
            flip=bool(flip[0]),
            labels=self.labels(ids),
            weight=float(self.weights(ids)[0]),
        )
