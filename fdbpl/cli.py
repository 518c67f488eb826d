"""The ``fdbpl`` command: build and inspect RIL tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import fdbpl

__all__ = ["build_parser", "main"]


def _add_build_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-cache",
        help="compute the teacher's soft labels for random crops of an image folder (the RIL table)",
        description=(
            "Build a RIL table: for every image of IMAGES (one sub-folder per class), draw random crops, "
            "run the teacher CLIP on them once, and store the Top-K soft labels and the information "
            "weight of each crop in OUT. Run it under torchrun to spread the work over processes or GPUs; "
            "run it again after an interruption to resume."
        ),
    )
    p.add_argument("images", help="image folder: IMAGES/CLASS/IMAGE")
    p.add_argument("out", help="the table's folder")
    p.add_argument("--teacher", required=True, help="open_clip model name or path of a model-config JSON")
    p.add_argument(
        "--pretrained",
        default="none",
        help="open_clip pretrained tag, local checkpoint path, or 'none' for random weights (default: none)",
    )
    p.add_argument("--crops-per-image", type=int, default=500, help="regions per image, M (default: 500)")
    p.add_argument("--topk", type=int, default=20, help="classes kept per region, K (default: 20)")
    p.add_argument(
        "--strategy", choices=["mr", "ms"], default="mr", help="sparsification, Eq. 5 or 4 (default: mr)"
    )
    p.add_argument("--seed", type=int, default=0, help="crop seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=256, help="crops per teacher call (default: 256)")
    p.add_argument("--classnames", help="file with one class name per line, in sorted folder order")
    p.add_argument(
        "--template", default="a photo of a {}.", help="teacher prompt (default: 'a photo of a {}.')"
    )
    p.add_argument("--temperature", type=float, help="softmax temperature (default: the teacher's own)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"))
    p.add_argument("--ratio", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("MIN", "MAX"))
    p.add_argument("--shard-size", type=int, default=64, help="images per shard (default: 64)")
    p.add_argument("--num-workers", type=int, default=0, help="crop-rendering worker processes (default: 0)")
    p.add_argument("--device", default="auto", help="teacher device: auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a table in OUT built with other settings"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_build_cache)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a RIL table", description="Summarise a RIL table.")
    p.add_argument("table", help="the table's folder")
    p.add_argument(
        "--plot", metavar="FILE.png", help="also draw a histogram of w and the lowest/highest-w crops"
    )
    p.add_argument("--images", help="the image folder (for --plot; default: from the manifest's build)")
    p.set_defaults(handler=_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdbpl",
        description="Faster Distillation-Based Prompt Learning for CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"fdbpl {fdbpl.__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    _add_build_cache(sub)
    _add_inspect(sub)
    return parser


def _init_distributed() -> tuple[int, str]:
    """Join the torchrun process group when there is one; returns (local rank, device kind)."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return local_rank, "cuda" if torch.cuda.is_available() else "cpu"


def _read_classnames(path: str) -> list[str]:
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(n) for n in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _build_cache(args: argparse.Namespace) -> int:
    import torch

    from fdbpl.cache import build_table, clip_teacher, scan_image_folder
    from fdbpl.models import load_open_clip

    local_rank, kind = _init_distributed()
    device = args.device
    if device == "auto":
        device = f"cuda:{local_rank}" if kind == "cuda" else "cpu"
    classnames = _read_classnames(args.classnames) if args.classnames else None
    scan = scan_image_folder(args.images, classnames)
    loaded = load_open_clip(args.teacher, args.pretrained, device=device)
    teacher = clip_teacher(
        loaded.model,
        scan.classnames,
        loaded.tokenizer,
        loaded.image_size,
        loaded.mean,
        loaded.std,
        template=args.template,
        temperature=args.temperature,
        description={"name": loaded.name, "pretrained": loaded.pretrained},
    )
    summary = build_table(
        args.images,
        args.out,
        teacher,
        scan=scan,
        crops_per_image=args.crops_per_image,
        topk=args.topk,
        strategy=args.strategy,
        seed=args.seed,
        batch_size=args.batch_size,
        scale=tuple(args.scale),
        ratio=tuple(args.ratio),
        shard_size=args.shard_size,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0:
        print(summary)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def _histogram(values, bins: int = 10, width: int = 40) -> list[str]:
    import numpy as np

    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    return [
        f"  [{lo:.1f}, {hi:.1f}{']' if i == bins - 1 else ')'} {'#' * round(width * c / top):<{width}} {c}"
        for i, (lo, hi, c) in enumerate(zip(edges[:-1], edges[1:], counts))
    ]


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from fdbpl.cache import RILTable

    table = RILTable.open(args.table)
    m = table.manifest
    teacher = m["teacher"]
    w = table.weights(np.arange(len(table))).numpy()
    lines = [
        f"table       {table.path}",
        f"schema      version {m['schema_version']}, fdbpl {m.get('fdbpl_version', '?')}",
        f"classes     C = {table.num_classes} (sha256 {m['classnames_sha256'][:12]})",
        f"images      {table.num_images} (sha256 {m['images_sha256'][:12]}), "
        f"{len(m.get('skipped', []))} skipped, {len(m.get('converted', []))} converted to RGB",
        f"regions     {len(table)} = {table.num_images} x {table.crops_per_image} crops, {len(m['shards'])} shard(s)",
        f"labels      Top-{table.topk}, {table.strategy.upper()}",
        f"storage     {table.bytes_per_region} bytes per region, {len(table) * table.bytes_per_region / 2**20:.2f} MiB",
        f"teacher     {teacher.get('name', '?')} ({teacher.get('pretrained', '?')}), {teacher['image_size']} px, "
        f"template {teacher.get('template', '?')!r}, temperature {teacher.get('temperature', '?')}",
        f"crops       scale {m['crops']['scale']}, ratio {[round(r, 3) for r in m['crops']['ratio']]}, "
        f"flip p={m['crops']['flip_probability']}, {m['crops']['interpolation']}, seed {m['seed']}",
        f"weight w    mean {w.mean():.3f}, min {w.min():.3f}, max {w.max():.3f}",
        *_histogram(w),
    ]
    print("\n".join(lines))
    if args.plot:
        from fdbpl.cache.plot import plot_table

        plot_table(table, args.images, args.plot)
        print(f"plot        {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fdbpl`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from fdbpl.errors import FDBPLError

    try:
        return int(args.handler(args))
    except FDBPLError as e:
        print(f"fdbpl {args.command}: error: {e}", file=sys.stderr)
        return 2
