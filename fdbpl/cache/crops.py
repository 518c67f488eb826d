"""Random crops: sampling boxes (recorded), and rendering a crop from its box and flip.

The same :func:`render_crop` makes the teacher's crops at build time and the student's
crops at replay time, so a replayed crop is the crop the teacher saw (resized to the
student's input size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fdbpl._checks import check_number
from fdbpl.errors import InputValueError
from fdbpl.images import render_crop  # re-exported: it lived here

__all__ = ["CropSampler", "check_range", "render_crop"]  # render_crop lives in fdbpl.images

#: The resampling recorded in the manifest: torchvision's BICUBIC with antialiasing.
INTERPOLATION = "bicubic"


def check_range(name: str, pair: Any, upper: float | None) -> tuple[float, float]:
    """A crop range ``(MIN, MAX)`` of finite numbers with ``0 < MIN <= MAX`` (``<= upper``)."""
    try:
        lo, hi = (check_number(name, v, positive=True) for v in pair)
    except (TypeError, ValueError):
        raise InputValueError(f"{name}: expected two finite numbers (MIN, MAX) > 0, got {pair!r}") from None
    if lo > hi or (upper is not None and hi > upper):
        most = f" <= {upper:g}" if upper is not None else ""
        raise InputValueError(f"{name}: expected 0 < MIN <= MAX{most}, got {lo:g} {hi:g}")
    return lo, hi


@dataclass(frozen=True)
class CropSampler:
    """RandomResizedCrop-style boxes plus a horizontal flip with probability 0.5.

    Every image draws its crops from its own generator, seeded by ``(seed, image_index)``,
    so a crop depends only on the seed and the image, never on the process, the shard or
    the order of work.

    Args:
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width / height).
        seed: the table's seed.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    seed: int = 0

    def generator(self, image_index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([int(self.seed), int(image_index)]))

    def sample(self, image_index: int, height: int, width: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` boxes ``(top, left, height, width)`` and flips for one image.

        Returns:
            ``boxes`` (count, 4) int64 and ``flips`` (count,) bool.
        """
        rng = self.generator(image_index)
        boxes = np.empty((count, 4), dtype=np.int64)
        flips = np.empty(count, dtype=bool)
        for m in range(count):
            boxes[m] = self._box(rng, height, width)
            flips[m] = rng.random() < 0.5
        return boxes, flips

    def _box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        # torchvision's RandomResizedCrop.get_params, with a numpy generator.
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w
