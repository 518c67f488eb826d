"""RIL table: random-access label reads vs one torch.save file per image, and build throughput.

    python benchmarks/bench_table.py [--images 64] [--crops 500] [--classes 1000] [--topk 20]

1. Reads: R random regions read back (labels, weight, box, flip) from the memory-mapped
   table, and from the FKD layout (one ``torch.save`` file per image holding all its
   crops, loaded for every region read). Prints regions/s of both, the ratio (target
   >= 50x) and bytes per region (target <= 4K + 16).
2. Build: a ViT-B-32 teacher (random init, 224 px) builds a small table; its regions/s
   against the teacher's pure forward throughput on the same crops (target >= 0.9).
3. Features: ``RegionDataset`` items/s from a table that stores the student's image
   features (D = 512, as ViT-B/32) against the same table's crops replayed at 224 px
   (decode, crop, resize, normalise), and the bytes per region of both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fdbpl.cache import (
    RegionDataset,
    RILTable,
    StudentFeatures,
    Teacher,
    build_table,
    clip_teacher,
    scan_image_folder,
)
from fdbpl.cache.crops import CropSampler
from fdbpl.images import InputRecipe, decode_image, render_crop
from fdbpl.synthetic import SYNTHETIC_CLASSES, draw_image_folder


def random_teacher(num_classes: int, seed: int = 0) -> Teacher:
    gen = torch.Generator().manual_seed(seed)

    def probs(crops: torch.Tensor) -> torch.Tensor:
        return torch.softmax(4 * torch.randn(crops.shape[0], num_classes, generator=gen), dim=1)

    return Teacher(probs, 8, (0.5,) * 3, (0.5,) * 3, {"name": "random"})


def write_fkd(table: RILTable, folder: Path) -> list[Path]:
    """One torch.save file per image with all its crops, as FKD-style soft-label stores do."""
    m = table.crops_per_image
    files = []
    for image in range(table.num_images):
        ids = np.arange(image * m, (image + 1) * m)
        regions = table.regions(ids)
        labels = regions.labels
        record = {
            "coords": torch.from_numpy(regions.boxes),
            "flip": torch.from_numpy(regions.flips),
            "indices": labels.indices.to(torch.int16 if table.num_classes < 2**15 else torch.int32),
            "values": labels.values.half(),
            "weight": regions.weights.half(),
        }
        path = folder / f"{image:06d}.pt"
        torch.save(record, path)
        files.append(path)
    return files


def read_benchmark(args: argparse.Namespace, tmp: Path) -> None:
    images = draw_image_folder(
        tmp / "img", classes=list(SYNTHETIC_CLASSES)[:2], per_class=args.images // 2, size=(64, 48)
    )
    scan = scan_image_folder(images)
    scan.classnames = [
        f"class {i}" for i in range(args.classes)
    ]  # labels over C classes; folders don't matter here
    build_table(
        images,
        tmp / "table",
        random_teacher(args.classes),
        scan=scan,
        crops_per_image=args.crops,
        topk=args.topk,
        batch_size=1000,
        shard_size=64,
        progress=False,
    )
    table = RILTable.open(tmp / "table")
    (tmp / "fkd").mkdir()
    files = write_fkd(table, tmp / "fkd")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, len(table), size=args.reads)
    m = table.crops_per_image

    def read_table() -> None:
        for i in ids:
            table.read(int(i))

    def read_table_batched() -> None:
        for batch in np.array_split(ids, max(1, len(ids) // 128)):
            table.regions(batch)

    def read_fkd() -> None:
        for i in ids:
            record = torch.load(files[i // m], weights_only=True)
            r = i % m
            record["indices"][r], record["values"][r], record["coords"][r], record["flip"][r]

    times = {}
    variants = (("table", read_table), ("batched", read_table_batched), ("fkd", read_fkd))
    for name, fn in variants + variants:
        start = time.perf_counter()
        fn()
        times[name.strip()] = min(times.get(name.strip(), float("inf")), time.perf_counter() - start)
    fkd_bytes = sum(p.stat().st_size for p in files) / len(table)
    print(
        f"reads: {len(table)} regions ({table.num_images} images x {m} crops), C = {table.num_classes}, K = {table.topk}"
    )
    print(
        f"  table, one by one     {args.reads / times['table']:10.0f} regions/s   {table.bytes_per_region:6.1f} bytes/region (budget 4K+16 = {4 * table.topk + 16})"
    )
    print(
        f"  fkd, one file a read  {args.reads / times['fkd']:10.0f} regions/s   {fkd_bytes:6.1f} bytes/region"
    )
    print(f"  table, batches of 128 {args.reads / times['batched']:10.0f} regions/s")
    print(
        f"  table/fkd read speed: {times['fkd'] / times['table']:.1f}x one region at a time, "
        f"{times['fkd'] / times['batched']:.1f}x in batches"
    )


def build_benchmark(args: argparse.Namespace, tmp: Path) -> None:
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    images = draw_image_folder(tmp / "bimg", per_class=1, size=(320, 256))
    scan = scan_image_folder(images)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    teacher = clip_teacher(model, scan.classnames, open_clip.get_tokenizer("ViT-B-32"), 224, mean, std)
    m, batch = args.build_crops, args.build_batch
    sampler = CropSampler()
    crops = []
    for i, rec in enumerate(scan.images):
        image = decode_image(images / rec.path)
        boxes, flips = sampler.sample(i, rec.height, rec.width, m)
        crops.extend(render_crop(image, b, bool(f), 224, mean, std) for b, f in zip(boxes, flips))
    crops_t = torch.stack(crops)
    teacher(crops_t[:batch])  # warm up
    start = time.perf_counter()
    for chunk in crops_t.split(batch):
        teacher(chunk)
    forward = len(crops_t) / (time.perf_counter() - start)
    print(
        f"build: ViT-B-32 teacher (random init) at 224 px, {len(scan.images)} images x {m} crops, batch {batch}"
    )
    print(f"  teacher forward only     {forward:8.1f} regions/s")
    for workers in (0, 1):
        summary = build_table(
            images,
            tmp / f"btable{workers}",
            teacher,
            scan=scan,
            crops_per_image=m,
            topk=5,
            batch_size=batch,
            num_workers=workers,
            progress=False,
        )
        rate = summary.regions_computed / summary.seconds
        print(
            f"  build, {workers} render worker(s) {rate:8.1f} regions/s   build/forward = {rate / forward:.2f}"
        )


def features_benchmark(args: argparse.Namespace, tmp: Path) -> None:
    images = draw_image_folder(tmp / "fimg", per_class=4, size=(320, 256))
    scan = scan_image_folder(images)
    scan.classnames = [f"class {i}" for i in range(args.classes)]  # labels over C classes
    gen = torch.Generator().manual_seed(0)
    # the values do not matter for read speed: random unit vectors as a ViT-B/32's features
    student = StudentFeatures(
        lambda crops: torch.randn(len(crops), 512, generator=gen),
        InputRecipe(224),
        512,
        {"name": "random", "image_tower_sha256": "0" * 64},
    )
    build_table(
        images,
        tmp / "ftable",
        random_teacher(args.classes),
        student=student,
        scan=scan,
        crops_per_image=args.feature_crops,
        topk=args.topk,
        batch_size=1000,
        progress=False,
    )
    table = RILTable.open(tmp / "ftable")
    stored = RegionDataset(table, images, recipe=InputRecipe(224))
    replayed = RegionDataset(table, images, recipe=InputRecipe(224), features=False)
    n = 4 * len(stored)

    def read(data: RegionDataset) -> None:
        for i in range(n):
            data[i % len(data)]

    times = {}
    for name, data in (("stored", stored), ("replayed", replayed)) * 2:
        start = time.perf_counter()
        read(data)
        times[name] = min(times.get(name, float("inf")), time.perf_counter() - start)
    labels_only = table.bytes_per_region - 2 * 512
    print(f"features: RegionDataset items, {table.num_images} images of 320x256, K = {table.topk}")
    print(
        f"  stored features (D = 512)  {n / times['stored']:10.0f} items/s   {table.bytes_per_region} bytes/region"
    )
    print(f"  crops replayed at 224 px   {n / times['replayed']:10.0f} items/s   {labels_only} bytes/region")
    print(f"  stored/replayed read speed: {times['replayed'] / times['stored']:.1f}x")
    verify_benchmark(table, stored)


def verify_benchmark(table: RILTable, data: RegionDataset) -> None:
    """What verifying a table by default costs: seconds per GB, and against one epoch of
    reading its stored features."""
    size = sum(p.stat().st_size for p in table.path.rglob("*") if p.is_file())
    seconds = {"verify": float("inf"), "epoch": float("inf")}
    for _ in range(2):
        start = time.perf_counter()
        table.verify(progress=False, force=True)
        seconds["verify"] = min(seconds["verify"], time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(len(data)):
            data[i]
        seconds["epoch"] = min(seconds["epoch"], time.perf_counter() - start)
    start = time.perf_counter()
    table.verify(progress=False)  # verified already in this process: stats only
    again = time.perf_counter() - start
    print(f"verify: the SHA-256 of every file, {size / 1e6:.1f} MB")
    print(
        f"  {seconds['verify'] / (size / 1e9):.2f} s per GB; {seconds['verify'] / seconds['epoch']:.2f}x one epoch of stored-feature items"
    )
    print(f"  again in the same process (unchanged files): {again / seconds['verify']:.4f}x the first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, default=64, help="images of the read benchmark's table (default: 64)"
    )
    parser.add_argument(
        "--crops", type=int, default=500, help="crops per image of that table, M (default: 500)"
    )
    parser.add_argument("--classes", type=int, default=1000, help="classes C (default: 1000)")
    parser.add_argument("--topk", type=int, default=20, help="classes kept per region, K (default: 20)")
    parser.add_argument(
        "--reads", type=int, default=2000, help="random regions read per variant (default: 2000)"
    )
    parser.add_argument(
        "--build-crops", type=int, default=32, help="crops per image of the build benchmark (default: 32)"
    )
    parser.add_argument(
        "--build-batch", type=int, default=64, help="the build's teacher batch size (default: 64)"
    )
    parser.add_argument(
        "--feature-crops",
        type=int,
        default=50,
        help="crops per image of the stored-features table (default: 50)",
    )
    parser.add_argument(
        "--skip-build", action="store_true", help="skip the build benchmark (a ViT-B-32 teacher)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d:
        read_benchmark(args, Path(d))
        if not args.skip_build:
            build_benchmark(args, Path(d))
        features_benchmark(args, Path(d))


if __name__ == "__main__":
    main()
