"""``fdbpl inspect --plot``: what low- and high-information regions look like (needs matplotlib)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fdbpl.cache.scan import read_image
from fdbpl.cache.table import RILTable
from fdbpl.images import render_crop

__all__ = ["plot_table"]


def plot_table(
    table: RILTable, images: str | os.PathLike[str] | None, path: str | os.PathLike[str], per_row: int = 8
) -> bool:
    """Save a histogram of ``w`` and the ``per_row`` lowest- and highest-``w`` crops to ``path``.

    Each crop's caption is its ``w`` and the teacher's top-1 class for it. Without
    ``images`` (the folder the table was built on) only the histogram is drawn.

    Returns:
        whether the crops were drawn.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("Please install matplotlib to plot tables (pip install 'fdbpl[plot]')") from e
    w = table.regions(np.arange(len(table))).weights.numpy()
    order = np.argsort(w, kind="stable")
    picks = {"lowest w": order[:per_row], "highest w": order[::-1][:per_row]}
    rows = 1 if images is None else 3
    fig = plt.figure(figsize=(per_row * 1.4, 2.4 if images is None else 6.2))
    grid = fig.add_gridspec(rows, per_row, height_ratios=[1.6, 1, 1][:rows])
    ax = fig.add_subplot(grid[0, :])
    lo, hi = float(w.min()), float(w.max())
    margin = max(0.02 * (hi - lo), 1e-3)  # the axis fits the data, however narrow its range
    ax.hist(w, bins=40, range=(max(0.0, lo - margin), min(1.0, hi + margin)), color="#4a7bb7")
    ax.set_xlabel("information weight w (Eq. 6)")
    ax.set_ylabel("regions")
    ax.set_title(f"{table.path.name}: {len(table)} regions, Top-{table.topk} {table.strategy.upper()}")
    if images is None:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return False
    records = table.image_records
    decoded: dict[int, object] = {}
    for row, (title, ids) in enumerate(picks.items(), start=1):
        regions = table.regions(ids)
        boxes, flips = regions.boxes, regions.flips
        for col, (rid, box, flip) in enumerate(zip(ids, boxes, flips)):
            image_index = int(rid) // table.crops_per_image
            if image_index not in decoded:
                decoded[image_index] = read_image(Path(images), records[image_index])
            crop = render_crop(decoded[image_index], box, bool(flip), 96, (0, 0, 0), (1, 1, 1))  # type: ignore[arg-type]
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(crop.permute(1, 2, 0).clamp(0, 1).numpy())
            top = regions.labels.top1[col].item()
            ax.set_title(f"w={w[rid]:.2f}\nteacher: {table.classnames[top][:14]}", fontsize=7)
            ax.axis("off")
            if col == 0:
                ax.text(
                    -0.12,
                    0.5,
                    f"{title}\n(caption: the teacher's top-1)",
                    transform=ax.transAxes,
                    rotation=90,
                    va="center",
                    ha="right",
                    fontsize=9,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
