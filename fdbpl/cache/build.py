"""Building the RIL table: teacher soft labels for random crops, once, sharded and resumable.

Work is laid out so that the table does not depend on how it was computed: images are
cut into fixed shards of ``shard_size`` images, rank ``r`` of ``W`` builds shards
``r, r + W, ...``, every image's crops come from a generator seeded by ``(seed, image)``,
and the teacher always sees the same groups of crops. A build with 2 processes writes
the same bytes as a build with 1; a killed build run again finishes the same table.

Byte-identical tables across rank counts and resumes rest on that last point: the
teacher's outputs are computed in the same batches every time (groups of
``batch_size // crops_per_image`` whole images within a shard), because CPU and GPU
kernels may give other last bits for another batch composition.

Resume: see :mod:`fdbpl.cache.shards` for a shard's life and the build's lock; the
manifest is written last, after its checksum.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fdbpl.cache.codec import encode_features, encode_labels
from fdbpl.cache.crops import CropSampler, check_range
from fdbpl.cache.manifest import (
    BUILD_SETTINGS,
    MANIFEST,
    bytes_per_region,
    read_json_file,
    settings_of,
    shard_name,
    table_settings,
    write_manifest,
)
from fdbpl.cache.scan import ScanResult, read_image, scan_image_folder
from fdbpl.cache.shards import (
    BuildLock,
    clean_stale,
    clear,
    finish_shard,
    open_partial,
    shard_checksums,
    unknown_entries,
)
from fdbpl.cache.storage import write_json_atomic
from fdbpl.cache.student import StudentFeatures
from fdbpl.cache.teacher import Teacher
from fdbpl.distributed import barrier, broadcast_from_rank0, rank_and_world
from fdbpl.errors import InputValueError, TableFormatError
from fdbpl.images import render_crop
from fdbpl.options import check_settings, setting
from fdbpl.sparsify.topk import STRATEGIES

__all__ = ["BUILD_DEFAULTS", "BuildSettings", "BuildSummary", "build_table"]


@dataclass(frozen=True)
class BuildSettings:
    """How a table is built, checked as one value: :func:`build_table`'s settings.

    :data:`BUILD_DEFAULTS` holds the defaults of :func:`build_table`, ``fdbpl build-cache``
    and the Dassl trainer. See :func:`build_table` for each field.

    Raises:
        InputValueError: a count below its minimum, an unknown strategy, a crop range out
            of bounds.
    """

    crops_per_image: int = setting(500, "regions per image, M", minimum=1, source="the paper's")
    topk: int = setting(
        20, "classes kept per region, K, all of them when there are fewer", minimum=1, source="the paper's"
    )
    strategy: str = setting("mr", "sparsification, Eq. 5 (mr) or Eq. 4 (ms)", choices=STRATEGIES)
    seed: int = setting(0, "seed of the crops and of random weights", minimum=0)
    batch_size: int = setting(256, "crops per teacher call", minimum=1)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    shard_size: int = setting(64, "images per shard", minimum=1)
    num_workers: int = setting(0, "crop-rendering worker processes", minimum=0)

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "scale", check_range("scale", self.scale, 1.0))
        object.__setattr__(self, "ratio", check_range("ratio", self.ratio, None))


#: The defaults of every table build.
BUILD_DEFAULTS = BuildSettings()


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
            f"{self.path}: table of {self.regions} regions, {self.bytes_per_region} bytes per region "
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


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if a.get(k) != b.get(k) and k != "fdbpl_version"]


def _prepare_out(out: Path, settings: dict[str, Any], overwrite: bool) -> bool:
    """Check or create OUT for this build (holding its lock); True if a complete table with
    these settings is there."""
    clean_stale(out)
    manifest_path, settings_path = out / MANIFEST, out / BUILD_SETTINGS
    existing = None
    try:
        if manifest_path.exists():
            existing = settings_of(read_json_file(manifest_path, "out"))
        elif settings_path.exists():
            existing = read_json_file(settings_path, "out")
    except TableFormatError as e:
        if not overwrite:
            raise TableFormatError(f"{e}; pass overwrite=True (--overwrite) to replace it") from None
        existing = {}
    if existing is not None:
        diff = _differences(existing, settings) if isinstance(existing, dict) else ["settings"]
        if not diff:
            return manifest_path.exists()
        if not overwrite:
            raise TableFormatError(
                f"out: {out} holds a table built with other settings ({', '.join(diff)} differ); "
                "pass overwrite=True (--overwrite) to replace it, or choose another folder"
            )
        clear(out)
    elif others := unknown_entries(out):
        raise TableFormatError(
            f"out: {out} is not empty and holds no fdbpl table ({others[0]} is there); "
            "choose an empty or new folder"
        )
    write_json_atomic(settings_path, settings)
    return False


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
        student: StudentFeatures | None,
    ) -> None:
        self.root, self.scan, self.groups = root, scan, groups
        self.m, self.sampler = crops_per_image, sampler
        # the crop recipes only: the models themselves stay in the main process
        self.recipe = (teacher.image_size, teacher.mean, teacher.std)
        self.student_recipe = None
        if student is not None:
            r = student.recipe
            self.student_recipe = None if (r.size, r.mean, r.std) == self.recipe else (r.size, r.mean, r.std)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        crops, student_crops, boxes, flips = [], [], [], []
        for i in self.groups[k]:
            rec = self.scan.images[i]
            image = read_image(self.root, rec)  # the scanned image: same size and SHA-256
            b, f = self.sampler.sample(i, rec.height, rec.width, self.m)
            crops.extend(render_crop(image, box, bool(fl), *self.recipe) for box, fl in zip(b, f))
            if self.student_recipe is not None:  # the crop as the student sees it when replayed
                student_crops.extend(
                    render_crop(image, box, bool(fl), *self.student_recipe) for box, fl in zip(b, f)
                )
            boxes.append(b)
            flips.append(f)
        batch = {
            "crops": torch.stack(crops),
            "boxes": torch.from_numpy(np.concatenate(boxes)),
            "flips": torch.from_numpy(np.concatenate(flips)),
        }
        if student_crops:
            batch["student_crops"] = torch.stack(student_crops)
        return batch


def build_table(
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    teacher: Teacher,
    *,
    student: StudentFeatures | None = None,
    scan: ScanResult | None = None,
    classnames: list[str] | None = None,
    crops_per_image: int = BUILD_DEFAULTS.crops_per_image,
    topk: int = BUILD_DEFAULTS.topk,
    strategy: str = BUILD_DEFAULTS.strategy,
    seed: int = BUILD_DEFAULTS.seed,
    batch_size: int = BUILD_DEFAULTS.batch_size,
    scale: tuple[float, float] = BUILD_DEFAULTS.scale,
    ratio: tuple[float, float] = BUILD_DEFAULTS.ratio,
    shard_size: int = BUILD_DEFAULTS.shard_size,
    num_workers: int = BUILD_DEFAULTS.num_workers,
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
        student: also store the student's image feature of every crop (float16,
            L2-normalised; :func:`~fdbpl.cache.clip_student_features`), rendered with the
            student's own recipe, so that training skips the frozen image encoder. Only
            for methods that learn no vision prompts.
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
    plan = _plan(
        Path(images),
        Path(out),
        teacher,
        student,
        scan,
        classnames,
        BuildSettings(
            crops_per_image=crops_per_image,
            topk=topk,
            strategy=strategy,
            seed=seed,
            batch_size=batch_size,
            scale=scale,
            ratio=ratio,
            shard_size=shard_size,
            num_workers=num_workers,
        ),
    )
    rank, world = rank_and_world()
    summary = plan.summary(rank, world)
    with contextlib.ExitStack() as stack:
        if not _lock_and_prepare(plan, overwrite, stack):
            summary.regions_computed = _build_shards(plan, progress)
    summary.seconds = time.perf_counter() - start
    return summary


def _lock_and_prepare(plan: _Plan, overwrite: bool, stack: contextlib.ExitStack) -> bool:
    """Rank 0 locks OUT (for the life of ``stack``) and checks or prepares it; every rank
    learns the outcome, so a refusal stops all of them instead of leaving the others
    waiting at a barrier. True if a complete table with these settings is there."""
    status: tuple[str, Any] = ("", None)
    if rank_and_world()[0] == 0:
        try:
            plan.out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(BuildLock(plan.out))
            status = ("complete", _prepare_out(plan.out, plan.settings, overwrite))
        except TableFormatError as e:
            status = ("refused", str(e))
    outcome, value = broadcast_from_rank0(status)
    if outcome == "refused":
        raise TableFormatError(value)
    return bool(value)


def _build_shards(plan: _Plan, progress: bool) -> int:
    """Build this rank's shards, then (rank 0) the manifest; returns the regions computed."""
    rank, world = rank_and_world()
    mine = [s for s in range(plan.num_shards) if s % world == rank]
    bar = _progress_bar(plan, mine) if progress and rank == 0 else None
    computed = sum(_build_shard(plan, s, bar) for s in mine)
    if bar is not None:
        bar.close()
    barrier()
    if rank == 0:
        _write_manifest(plan)
    barrier()
    return computed


@dataclass
class _Plan:
    """What a build computes and how its work is laid out."""

    root: Path
    out: Path
    scan: ScanResult
    teacher: Teacher
    student: StudentFeatures | None
    sampler: CropSampler
    settings: dict[str, Any]
    batch_size: int
    num_workers: int

    @property
    def crops_per_image(self) -> int:
        return int(self.settings["crops_per_image"])

    @property
    def shard_size(self) -> int:
        return int(self.settings["shard_size"])

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.scan.images) / self.shard_size)

    def summary(self, rank: int, world: int) -> BuildSummary:
        """A summary of this build with nothing computed yet."""
        regions = len(self.scan.images) * self.crops_per_image
        skipped, converted = self.scan.skipped, self.scan.converted
        return BuildSummary(
            self.out, regions, bytes_per_region(self.settings), 0.0, 0, rank, world, skipped, converted
        )

    def shard_images(self, s: int) -> range:
        first = s * self.shard_size
        return range(first, min(first + self.shard_size, len(self.scan.images)))


def _plan(
    root: Path,
    out: Path,
    teacher: Teacher,
    student: StudentFeatures | None,
    scan: ScanResult | None,
    classnames: list[str] | None,
    options: BuildSettings,
) -> _Plan:
    """Scan the images (``options`` are checked): everything a build needs before it writes."""
    scan = scan if scan is not None else scan_image_folder(root, classnames)
    if not scan.images:
        raise InputValueError(f"images: no readable image under {root}")
    c, topk = len(scan.classnames), options.topk
    if topk > c:  # the paper's K = 20 on a base half of 5 classes: all of them are kept
        warnings.warn(f"topk: K={topk} is more than the {c} classes; keeping all {c}", stacklevel=3)
        topk = c
    sampler = CropSampler(options.scale, options.ratio, int(options.seed))
    settings = table_settings(
        scan, teacher, topk, options.strategy, options.crops_per_image, sampler, options.shard_size, student
    )
    return _Plan(
        root, out, scan, teacher, student, sampler, settings, options.batch_size, options.num_workers
    )


def _progress_bar(plan: _Plan, shards: list[int]) -> Any:
    from tqdm.auto import tqdm

    regions = sum(len(plan.shard_images(s)) for s in shards) * plan.crops_per_image
    return tqdm(total=regions, unit="region", desc=f"building {plan.out.name}", dynamic_ncols=True)


def _build_shard(plan: _Plan, s: int, bar: Any) -> int:
    """Compute (or finish) shard ``s``; returns the number of regions computed now."""
    m, images = plan.crops_per_image, plan.shard_images(s)
    if (plan.out / shard_name(s)).is_dir():
        if bar is not None:
            bar.update(len(images) * m)
        return 0
    cols = open_partial(plan.out, s, len(images), plan.settings)
    # The teacher sees fixed groups of whole images, whatever the ranks or resumes: this
    # is what makes its outputs, and so the table, the same bytes every time.
    per_group = max(1, plan.batch_size // m)
    groups = [range(g, min(g + per_group, len(images))) for g in range(0, len(images), per_group)]
    if bar is not None:
        bar.update(int(cols["done"].sum()) * m)
    pending = [g for g in groups if not all(cols["done"][list(g)])]
    absolute = [range(images.start + g.start, images.start + g.stop) for g in pending]
    dataset = _PendingGroups(plan.root, plan.scan, absolute, m, plan.sampler, plan.teacher, plan.student)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=plan.num_workers)
    computed = 0
    settings = plan.settings
    for g, batch in zip(pending, loader):
        rows = slice(g.start * m, g.stop * m)
        parts = [
            encode_labels(
                plan.teacher(chunk), settings["num_classes"], settings["topk"], settings["strategy"]
            )
            for chunk in batch["crops"].split(plan.batch_size)
        ]
        for name in parts[0]:
            cols[name][rows] = np.concatenate([p[name] for p in parts])
        if plan.student is not None:  # same groups and chunks as the teacher: the same bytes every time
            crops = batch.get("student_crops", batch["crops"])
            cols["features"][rows] = np.concatenate(
                [encode_features(plan.student(chunk)) for chunk in crops.split(plan.batch_size)]
            )
        cols["box"][rows] = batch["boxes"].numpy()
        cols["flip"][rows] = batch["flips"].numpy()
        for name, col in cols.items():
            if name != "done":
                col.flush()
        cols["done"][g.start : g.stop] = 1  # only after the rows are in place
        cols["done"].flush()
        computed += len(g) * m
        if bar is not None:
            bar.update(len(g) * m)
    finish_shard(plan.out, s, cols)
    return computed


def _write_manifest(plan: _Plan) -> None:
    """The last step: the manifest, with every shard's checksums."""
    missing = [s for s in range(plan.num_shards) if not (plan.out / shard_name(s)).is_dir()]
    if missing:
        raise TableFormatError(f"out: shards {missing[:5]} were not finished by their ranks")
    shards = [
        {
            "name": shard_name(s),
            "first_image": plan.shard_images(s).start,
            "num_images": len(plan.shard_images(s)),
            "sha256": shard_checksums(plan.out, s),
        }
        for s in range(plan.num_shards)
    ]
    write_manifest(plan.out, plan.settings, shards)
