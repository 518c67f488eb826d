"""Replaying the table's crops for training: the image region and its stored teacher labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fdbpl.cache.scan import read_image
from fdbpl.cache.table import RILTable
from fdbpl.errors import InputValueError, TableFormatError
from fdbpl.images import OPENAI_MEAN, OPENAI_STD, InputRecipe, render_crop

__all__ = ["RegionDataset"]


class RegionDataset(torch.utils.data.Dataset):
    """Training items replayed from a :class:`RILTable`.

    Item ``i`` is image ``i % num_images`` with one of its stored regions, drawn afresh
    each epoch (seeded by ``(seed, epoch, i)``; call :meth:`set_epoch`). The crop is
    rendered from its stored box and flip with the table's recipe (bicubic, antialiased
    resize on uint8, flip, normalise) at the student's ``image_size``.

    Every image is checked as it is read (:func:`~fdbpl.cache.scan.read_image`): it
    must lie inside ``root``, have the size the table recorded and, for tables that
    recorded one, the same SHA-256 (the bytes are hashed as they are read, a few percent
    of the decoding time), so another image under the same name is refused, not replayed.

    Items are dicts of tensors: ``image`` :math:`(3, S, S)` float32, ``indices``
    :math:`(K,)` int64, ``values`` :math:`(K,)` float16, ``fill`` :math:`()` float32,
    ``weight`` :math:`()` float32 (Eq. 6 of the teacher's full distribution), ``region``
    :math:`()` int64, ``label`` :math:`()` int64 (the image's class folder). With
    ``crops_per_image = n > 1`` the image is decoded once and every tensor gains a
    leading dimension n (n distinct regions). A default ``DataLoader`` collates them;
    :meth:`fdbpl.sparsify.SparseSoftLabels.from_batch` turns a batch into labels.

    From a table that stores the student's image features (built with a student), items
    carry ``features`` :math:`(D,)` float16 (L2-normalised) in place of ``image``: no image
    is read or decoded, and the training step skips the frozen image encoder. Check the
    student first (:meth:`RILTable.check_student`): the features belong to one image tower.

    Args:
        table: the opened table.
        root: the image folder the table was built on (not read, and may be ``None``, when
            items carry stored features).
        image_size: the student's input side S.
        mean, std: the student's normalisation.
        crops_per_image: regions per item.
        length: items per epoch (default: the number of images); item ``i`` uses image
            ``i % num_images``.
        seed: the region draw's seed.
        recipe: the student's input as one value (:class:`~fdbpl.images.InputRecipe`);
            replaces ``image_size``, ``mean`` and ``std``.
        features: items carry the stored student features instead of images; default
            (``None``): when the table stores them. ``True`` on a table without them is
            an error.
        verify: check the table's bytes against its recorded SHA-256 first
            (:meth:`RILTable.verify`, once per process); ``False`` trusts them.
        progress: the verification's progress bar; ``None``: when stderr is a terminal.

    Raises:
        TableFormatError: ``verify`` found a file that differs from its checksum.
        InputValueError: ``crops_per_image`` out of range, ``features`` the table lacks,
            or images missing under ``root``.
    """

    def __init__(
        self,
        table: RILTable,
        root: str | os.PathLike[str] | None,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_MEAN,
        std: Sequence[float] = OPENAI_STD,
        crops_per_image: int = 1,
        length: int | None = None,
        seed: int = 0,
        recipe: InputRecipe | None = None,
        features: bool | None = None,
        verify: bool = True,
        progress: bool | None = None,
    ) -> None:
        if not 1 <= crops_per_image <= table.crops_per_image:
            raise InputValueError(
                f"crops_per_image: expected 1 <= n <= {table.crops_per_image} (the table's regions per image), "
                f"got {crops_per_image}"
            )
        if features and not table.has_features:
            raise InputValueError(
                f"features: the table {table.path} stores no student image features "
                "(build it with a student: fdbpl build-cache --student MODEL)"
            )
        if verify:
            table.verify(progress)
        self.features = table.has_features if features is None else bool(features)
        self.table = table
        if root is None and not self.features:
            raise InputValueError(
                "root: the image folder is needed to replay crops (the table stores no features)"
            )
        self.root = Path(root) if root is not None else None
        missing = []
        if self.root is not None and not self.features:
            missing = [p for p in table.image_paths if not (self.root / p).is_file()]
        if missing:
            raise InputValueError(
                f"root: {len(missing)} of the table's {table.num_images} images are not under {self.root}, "
                f"e.g. {missing[0]}"
            )
        self.recipe = InputRecipe.of(recipe, image_size, mean, std)
        self.crops_per_image = crops_per_image
        self.length = table.num_images if length is None else int(length)
        self.seed = int(seed)
        self.epoch = 0
        self._labels = table.image_labels
        self._records = table.image_records

    @property
    def image_size(self) -> int:
        return self.recipe.size

    def set_epoch(self, epoch: int) -> None:
        """Draw other regions: call once per epoch, before iterating."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def region_ids(self, i: int) -> np.ndarray:
        """The region ids item ``i`` replays in the current epoch."""
        image = i % self.table.num_images
        m = self.table.crops_per_image
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i]))
        return image * m + rng.choice(m, size=self.crops_per_image, replace=False)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.length:
            raise IndexError(f"item {i} outside [0, {self.length})")
        ids = self.region_ids(i)
        image_index = i % self.table.num_images
        rows = [self.table.read(int(r)) for r in ids]
        item = {
            "indices": torch.from_numpy(np.stack([r["indices"] for r in rows]).astype(np.int64)),
            "values": torch.from_numpy(np.stack([r["values"] for r in rows])),
            "fill": torch.tensor([float(r["fill"]) for r in rows], dtype=torch.float32),
            "weight": torch.tensor([float(r["weight"]) for r in rows], dtype=torch.float32),
            "region": torch.from_numpy(ids),
            "label": torch.full((len(ids),), self._labels[image_index], dtype=torch.long),
        }
        if self.features:
            item["features"] = torch.from_numpy(np.stack([r["features"] for r in rows]))
        else:
            item["image"] = self._crops(image_index, ids, rows)
        if self.crops_per_image == 1:
            item = {k: v[0] for k, v in item.items()}
        return item

    def _crops(self, image_index: int, ids: np.ndarray, rows: list[dict[str, np.ndarray]]) -> torch.Tensor:
        """The stored regions of one image, rendered with the student's recipe."""
        assert self.root is not None
        record = self._records[image_index]
        image = read_image(self.root, record)
        for r, row in zip(ids, rows):
            top, left, height, width = (int(v) for v in row["box"])
            if height < 1 or width < 1 or top + height > record.height or left + width > record.width:
                raise TableFormatError(
                    f"table: region {int(r)} has box {[top, left, height, width]} outside its "
                    f"{record.width}x{record.height} image {record.path}"
                )
        return torch.stack(
            [
                render_crop(
                    image, r["box"], bool(r["flip"]), self.recipe.size, self.recipe.mean, self.recipe.std
                )
                for r in rows
            ]
        )
