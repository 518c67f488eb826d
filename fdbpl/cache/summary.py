"""The text summary of a table that ``fdbpl inspect`` prints."""

from __future__ import annotations

import numpy as np

from fdbpl.cache.provenance import describe_source
from fdbpl.cache.table import RILTable

__all__ = ["table_report"]


def _histogram(values: np.ndarray, bins: int = 10, width: int = 40) -> list[str]:
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    return [
        f"  [{lo:.1f}, {hi:.1f}{']' if i == bins - 1 else ')'} {'#' * round(width * c / top):<{width}} {c}"
        for i, (lo, hi, c) in enumerate(zip(edges[:-1], edges[1:], counts))
    ]


def _number(value: object) -> str:
    """A recorded number at a readable precision (0.010000000000000002 -> 0.01)."""
    return f"{value:.6g}" if isinstance(value, (int, float)) else "?"


def _student_line(table: RILTable) -> str:
    student = table.student
    if student is None:
        return "features    none stored (training runs the student's image encoder)"
    return (
        f"features    {student.get('name', '?')} ({student.get('pretrained', '?')}), D = {student['feature_dim']}, "
        f"{student['image_size']} px, float16, image tower sha256 {student['image_tower_sha256'][:12]}"
    )


def table_report(table: RILTable, verified: bool = False) -> str:
    """What a table holds, how it was built, and a histogram of its information weights."""
    m = table.manifest
    teacher = m["teacher"]
    w = table.regions(np.arange(len(table))).weights.numpy()
    mib = len(table) * table.bytes_per_region / 2**20
    lines = [
        f"table       {table.path}",
        f"schema      version {m['schema_version']}, fdbpl {m.get('fdbpl_version', '?')}",
        f"classes     C = {table.num_classes} (sha256 {m['classnames_sha256'][:12]})",
        f"images      {table.num_images} (sha256 {m['images_sha256'][:12]}), "
        f"{len(m.get('skipped', []))} skipped, {len(m.get('converted', []))} converted to RGB",
        f"source      {describe_source(m.get('source'))}",
        f"regions     {len(table)} = {table.num_images} x {table.crops_per_image} crops, {len(m['shards'])} shard(s)",
        f"labels      Top-{table.topk}, {table.strategy.upper()}",
        f"storage     {table.bytes_per_region} bytes per region, {mib:.2f} MiB",
        f"teacher     {teacher.get('name', '?')} ({teacher.get('pretrained', '?')}), {teacher['image_size']} px, "
        f"template {teacher.get('template', '?')!r}, temperature {_number(teacher.get('temperature'))}",
        f"crops       scale {m['crops'].get('scale')}, ratio {[round(r, 3) for r in m['crops'].get('ratio', [])]}, "
        f"flip p={m['crops'].get('flip_probability')}, {m['crops'].get('interpolation')}, seed {m['seed']}",
        _student_line(table),
        f"weight w    mean {w.mean():.3f}, min {w.min():.3f}, max {w.max():.3f}",
        *_histogram(w),
    ]
    if verified:
        lines.append("verified    every file matches the SHA-256 recorded when it was built")
    return "\n".join(lines)
