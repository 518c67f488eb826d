"""Building the RIL table: teacher soft labels for random crops, once, sharded and resumable.

Work is laid out so that the table does not depend on how it was computed: images are
cut into fixed shards of ``shard_size`` images, rank ``r`` of ``W`` builds shards
``r, r + W, ...``, every image's crops come from a generator seeded by ``(seed, image)``,
and the teacher always sees the same groups of crops. A build with 2 processes writes
the same bytes as a build with 1; a killed build run again finishes the same table.

Resume: a shard in progress lives in ``shard-NNNNN.partial/`` as memory-mapped columns
plus a per-image ``done`` flag that is set only after the image's rows are written. A
finished shard is renamed to ``shard-NNNNN/``; the manifest is written last. Nothing is
read as complete before its rename.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fdbpl
from fdbpl._checks import check_probabilities
from fdbpl.cache.crops import INTERPOLATION, CropSampler, render_crop
from fdbpl.cache.images import ScanResult, decode_image, list_hash, scan_image_folder
from fdbpl.cache.manifest import (
    BUILD_SETTINGS,
    MANIFEST,
    SCHEMA_VERSION,
    WEIGHT_SCALE,
    TableFormatError,
    bytes_per_region,
    column_specs,
    settings_of,
)
from fdbpl.cache.storage import read_json, write_json_atomic
from fdbpl.cache.teacher import Teacher
from fdbpl.errors import InputValueError
from fdbpl.losses.functional import information_weight
from fdbpl.sparsify import class_id_dtype, sparsify

__all__ = ["BuildSummary", "build_table"]


@dataclass
class BuildSummary:
    """What a build did; :meth:`__str__` is the closing summary the command prints."""

    path: Path
    regions: int
    bytes_per_region: int
    seconds: float
    regions_computed: int
    rank: int = 0
    world_size: int = 1
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        rate = self.regions_computed / self.seconds if self.seconds > 0 else float("nan")
        lines = [
            f"table {self.path}: {self.regions} regions, {self.bytes_per_region} bytes per region "
            f"({self.regions * self.bytes_per_region / 2**20:.1f} MiB of columns)",
            f"computed {self.regions_computed} regions in {self.seconds:.1f} s ({rate:.1f} regions/s)"
            + (f" on rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""),
        ]
        if self.converted:
            lines.append(f"converted to RGB: {len(self.converted)} image(s), e.g. {self.converted[0]}")
        if self.skipped:
            lines.append(
                f"skipped (unreadable): {len(self.skipped)} file(s), e.g. {self.skipped[0][0]}: {self.skipped[0][1]}"
            )
        return "\n".join(lines)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _settings(
    scan: ScanResult,
    teacher: Teacher,
    topk: int,
    strategy: str,
    crops_per_image: int,
    sampler: CropSampler,
    shard_size: int,
) -> dict[str, Any]:
    c = len(scan.classnames)
    largest = max(max(r.width, r.height) for r in scan.images)
    dtypes = {
        "box": "uint16" if largest <= np.iinfo(np.uint16).max else "int32",
        "flip": "uint8",
        "indices": class_id_dtype(c).name,
        "values": "float16",
        "weight": "uint16",
    }
    if strategy == "ms":
        dtypes["fill"] = "float32"
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
        "seed": sampler.seed,
        "classnames": list(scan.classnames),
        "classnames_sha256": list_hash(list(scan.classnames)),
        "images": images,
        "images_sha256": list_hash([[r.path, r.width, r.height] for r in scan.images]),
        "weight_scale": WEIGHT_SCALE,
        "dtypes": dtypes,
        "skipped": [list(s) for s in scan.skipped],
        "converted": list(scan.converted),
        "fdbpl_version": fdbpl.__version__,
    }


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k != "fdbpl_version"]


def _prepare_out(out: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Check or create OUT for this build; True if a complete table with these settings is there."""
    manifest_path, settings_path = out / MANIFEST, out / BUILD_SETTINGS
    existing = None
    if manifest_path.exists():
        existing = settings_of(read_json(manifest_path))
    elif settings_path.exists():
        existing = read_json(settings_path)
    if existing is not None:
        diff = _differences(existing, settings)
        if not diff:
            return manifest_path.exists()
        if not overwrite:
            raise TableFormatError(
                f"out: {out} holds a table built with other settings ({', '.join(diff)} differ); "
                "pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        _clear(out)
    elif out.exists() and any(out.iterdir()):
        raise TableFormatError(
            f"out: {out} is not empty and holds no fdbpl table; choose an empty or new folder"
        )
    write_json_atomic(settings_path, settings)
    return False


def _clear(out: Path) -> None:
    for p in out.iterdir():
        if p.name in (MANIFEST, BUILD_SETTINGS):
            p.unlink()
        elif p.is_dir() and p.name.startswith("shard-"):
            shutil.rmtree(p)


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}"


class _PendingGroups(torch.utils.data.Dataset):
    """Decoded and rendered crops of the groups of one shard that are still to do."""

    def __init__(
        self,
        root: Path,
        scan: ScanResult,
        groups: list[range],
        crops_per_image: int,
        sampler: CropSampler,
        teacher: Teacher,
    ) -> None:
        self.root, self.scan, self.groups = root, scan, groups
        self.m, self.sampler = crops_per_image, sampler
        # the crop recipe only: the teacher itself stays in the main process
        self.recipe = (teacher.image_size, teacher.mean, teacher.std)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        crops, boxes, flips = [], [], []
        for i in self.groups[k]:
            rec = self.scan.images[i]
            image = decode_image(self.root / rec.path)
            if tuple(image.shape[1:]) != (rec.height, rec.width):
                raise TableFormatError(f"images: {rec.path} changed size since it was scanned")
            b, f = self.sampler.sample(i, rec.height, rec.width, self.m)
            crops.extend(render_crop(image, box, bool(fl), *self.recipe) for box, fl in zip(b, f))
            boxes.append(b)
            flips.append(f)
        return {
            "crops": torch.stack(crops),
            "boxes": torch.from_numpy(np.concatenate(boxes)),
            "flips": torch.from_numpy(np.concatenate(flips)),
        }


def _open_partial(out: Path, s: int, n_images: int, settings: dict[str, Any]) -> dict[str, np.memmap]:
    """Open a shard in progress (resume), or create it zero-filled under a temporary name."""
    partial = out / f"{_shard_name(s)}.partial"
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
    tmp = out / f"{_shard_name(s)}.creating-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for n, (shape, dt) in specs.items():
        col = np.lib.format.open_memmap(tmp / f"{n}.npy", mode="w+", dtype=np.dtype(dt), shape=shape)
        col.flush()
        del col
    os.replace(tmp, partial)
    return {n: np.lib.format.open_memmap(partial / f"{n}.npy", mode="r+") for n in specs}


def _labels_rows(probs: torch.Tensor, num_classes: int, topk: int, strategy: str) -> dict[str, np.ndarray]:
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise InputValueError(
            f"teacher: expected probabilities of shape (B, {num_classes}) for {num_classes} classes, "
            f"got {tuple(probs.shape)}"
        )
    probs = probs.detach().cpu()  # half-precision teachers are checked at their own tolerance
    check_probabilities("teacher", probs)
    w = information_weight(probs)  # Eq. 6 on the teacher's full distribution
    labels = sparsify(probs, topk, strategy)  # type: ignore[arg-type]
    rows = {
        "indices": labels.indices.numpy(),
        "values": labels.values.numpy().astype(np.float16),
        "weight": np.rint(w.double().numpy() * WEIGHT_SCALE).astype(np.uint16),
    }
    if strategy == "ms":
        rows["fill"] = labels.fill.numpy().astype(np.float32)
    return rows


def build_table(
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teacher: Teacher,
    *,
    scan: ScanResult | None = None,
    classnames: list[str] | None = None,
    crops_per_image: int = 500,
    topk: int = 20,
    strategy: str = "mr",
    seed: int = 0,
    batch_size: int = 256,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    shard_size: int = 64,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> BuildSummary:
    """Compute the teacher's soft labels for ``crops_per_image`` random crops of every image.

    Under ``torch.distributed`` (e.g. ``torchrun``) every rank builds its own shards; call
    it on every rank with the same arguments. The table is the same whatever the number
    of ranks, and a build that was killed resumes where it stopped when run again.

    Args:
        images: an image-folder tree, one sub-folder per class (sorted order).
        out: the table's folder (created).
        teacher: a :class:`~fdbpl.cache.Teacher` (e.g. :func:`~fdbpl.cache.clip_teacher`).
        scan: the folder's scan, if already made (:func:`~fdbpl.cache.scan_image_folder`).
        classnames: class names for the folders (default: folder names, ``_`` as space).
        crops_per_image: M, regions per image (the paper: 500).
        topk: K, classes kept per region (the paper: 20).
        strategy: ``"mr"`` (Eq. 5) or ``"ms"`` (Eq. 4).
        seed: the crops' seed.
        batch_size: crops per teacher call; whole images are grouped when M is smaller.
        scale, ratio: RandomResizedCrop ranges.
        shard_size: images per shard (fixed: it does not depend on the number of ranks).
        num_workers: DataLoader workers that decode and render crops while the teacher runs.
        overwrite: replace a table in ``out`` that was built with other settings.
        progress: show a progress bar (rank 0).

    Returns:
        :class:`BuildSummary` (regions, bytes per region, time, skipped and converted files).
    """
    start = time.perf_counter()
    root, out = Path(images), Path(out)
    if strategy not in ("mr", "ms"):
        raise InputValueError(f"strategy: expected 'mr' or 'ms', got {strategy!r}")
    for name, v in (
        ("crops_per_image", crops_per_image),
        ("batch_size", batch_size),
        ("shard_size", shard_size),
    ):
        if int(v) != v or v < 1:
            raise InputValueError(f"{name}: expected a positive integer, got {v!r}")
    scan = scan if scan is not None else scan_image_folder(root, classnames)
    if not scan.images:
        raise InputValueError(f"images: no readable image under {root}")
    c = len(scan.classnames)
    if not 1 <= topk <= c:
        raise InputValueError(f"topk: expected 1 <= K <= C={c} (the number of classes), got {topk}")
    sampler = CropSampler(tuple(scale), tuple(ratio), int(seed))  # type: ignore[arg-type]
    settings = _settings(scan, teacher, topk, strategy, crops_per_image, sampler, shard_size)
    rank, world = _dist()
    # Rank 0 checks or prepares OUT; every rank learns the outcome, so a refusal stops all
    # of them instead of leaving the others waiting at a barrier.
    status: list[Any] = [None]
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            status = [("complete", _prepare_out(out, settings, overwrite))]
        except TableFormatError as e:
            status = [("refused", str(e))]
    if world > 1:
        torch.distributed.broadcast_object_list(status, src=0)
    outcome, value = status[0]
    if outcome == "refused":
        raise TableFormatError(value)
    complete = bool(value)
    n = len(scan.images)
    num_shards = math.ceil(n / shard_size)
    total = n * crops_per_image
    summary = BuildSummary(
        out, total, bytes_per_region(settings), 0.0, 0, rank, world, scan.skipped, scan.converted
    )
    if complete:
        summary.seconds = time.perf_counter() - start
        return summary

    mine = [s for s in range(num_shards) if s % world == rank]
    group = max(1, batch_size // crops_per_image)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        mine_regions = sum(min(shard_size, n - s * shard_size) for s in mine) * crops_per_image
        bar = tqdm(total=mine_regions, unit="region", desc=f"building {out.name}", dynamic_ncols=True)
    for s in mine:
        first = s * shard_size
        count = min(shard_size, n - first)
        final = out / _shard_name(s)
        if final.is_dir():
            if bar is not None:
                bar.update(count * crops_per_image)
            continue
        cols = _open_partial(out, s, count, settings)
        groups = [range(g, min(g + group, count)) for g in range(0, count, group)]
        if bar is not None:
            bar.update(int(cols["done"].sum()) * crops_per_image)
        pending = [g for g in groups if not all(cols["done"][list(g)])]
        absolute = [range(first + g.start, first + g.stop) for g in pending]
        dataset = _PendingGroups(root, scan, absolute, crops_per_image, sampler, teacher)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers)
        for g, batch in zip(pending, loader):
            rows = slice(g.start * crops_per_image, g.stop * crops_per_image)
            parts = [
                _labels_rows(teacher(chunk), c, topk, strategy) for chunk in batch["crops"].split(batch_size)
            ]
            for name in parts[0]:
                cols[name][rows] = np.concatenate([p[name] for p in parts])
            cols["box"][rows] = batch["boxes"].numpy()
            cols["flip"][rows] = batch["flips"].numpy()
            for name, col in cols.items():
                if name != "done":
                    col.flush()
            cols["done"][g.start : g.stop] = 1  # only after the rows are in place
            cols["done"].flush()
            summary.regions_computed += len(g) * crops_per_image
            if bar is not None:
                bar.update(len(g) * crops_per_image)
        del cols
        os.replace(out / f"{_shard_name(s)}.partial", final)
    if bar is not None:
        bar.close()
    _barrier()
    if rank == 0:
        missing = [s for s in range(num_shards) if not (out / _shard_name(s)).is_dir()]
        if missing:
            raise TableFormatError(f"out: shards {missing[:5]} were not finished by their ranks")
        shards = [
            {
                "name": _shard_name(s),
                "first_image": s * shard_size,
                "num_images": min(shard_size, n - s * shard_size),
            }
            for s in range(num_shards)
        ]
        write_json_atomic(out / MANIFEST, {**settings, "shards": shards})
        (out / BUILD_SETTINGS).unlink(missing_ok=True)
    _barrier()
    summary.seconds = time.perf_counter() - start
    return summary
