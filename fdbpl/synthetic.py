"""Small image-folder datasets drawn on the fly, for the demo and the tests (nothing is downloaded)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "draw_image_folder"]

#: Class folder name -> (shape, colour). Folder names use ``_`` for spaces.
SYNTHETIC_CLASSES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "red_circle": ("circle", (220, 40, 40)),
    "blue_square": ("square", (40, 70, 220)),
    "green_triangle": ("triangle", (40, 170, 60)),
    "yellow_star": ("star", (235, 200, 30)),
    "purple_ring": ("ring", (140, 60, 180)),
    "orange_stripes": ("stripes", (245, 140, 30)),
    "black_checkerboard": ("checker", (20, 20, 20)),
    "cyan_cross": ("cross", (30, 200, 210)),
}


def _polygon(kind: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if kind == "triangle":
        angles = [rot + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
    if kind == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = rot + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(kind)


def draw_image_folder(
    root: str | os.PathLike[str],
    classes: list[str] | None = None,
    per_class: int = 8,
    size: tuple[int, int] = (96, 80),
    seed: int = 0,
    image_format: str = "png",
) -> Path:
    """Draw ``per_class`` images for each class into ``root/CLASS/NNN.png``.

    Each image shows its class's shape in its colour, at a random place, size and
    rotation, on a noisy background, with some clutter, so that random crops range from
    clearly informative to empty background.

    Args:
        root: the folder to create.
        classes: folder names from :data:`SYNTHETIC_CLASSES` (default: all of them).
        per_class: images per class.
        size: (width, height) of the images.
        seed: drawing seed.
        image_format: ``"png"`` or ``"jpeg"``.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.
    """
    from PIL import Image, ImageDraw

    root = Path(root)
    names = list(SYNTHETIC_CLASSES) if classes is None else classes
    rng = np.random.default_rng(seed)
    width, height = size
    for name in names:
        shape, colour = SYNTHETIC_CLASSES[name]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            bg = rng.integers(150, 256, size=3)
            noise = rng.normal(0, 12, size=(height, width, 3))
            pixels = np.clip(bg[None, None, :] + noise, 0, 255).astype(np.uint8)
            img = Image.fromarray(pixels, "RGB")
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(0, 3))):  # grey clutter
                x, y = rng.integers(0, width), rng.integers(0, height)
                g = int(rng.integers(90, 200))
                draw.rectangle(
                    [x, y, x + int(rng.integers(4, 12)), y + int(rng.integers(4, 12))], fill=(g, g, g)
                )
            r = float(rng.uniform(0.2, 0.4)) * min(width, height)
            cx = float(rng.uniform(r, width - r))
            cy = float(rng.uniform(r, height - r))
            rot = float(rng.uniform(0, 2 * math.pi))
            box = [cx - r, cy - r, cx + r, cy + r]
            if shape == "circle":
                draw.ellipse(box, fill=colour)
            elif shape == "ring":
                draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
            elif shape == "square":
                draw.rectangle(box, fill=colour)
            elif shape == "cross":
                t = r / 3
                draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=colour)
                draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=colour)
            elif shape == "stripes":
                step = max(3, int(r / 3))
                for x0 in range(int(cx - r), int(cx + r), 2 * step):
                    draw.rectangle([x0, cy - r, x0 + step - 1, cy + r], fill=colour)
            elif shape == "checker":
                step = max(3, int(r / 3))
                for i, x0 in enumerate(range(int(cx - r), int(cx + r), step)):
                    for j, y0 in enumerate(range(int(cy - r), int(cy + r), step)):
                        if (i + j) % 2 == 0:
                            draw.rectangle([x0, y0, x0 + step - 1, y0 + step - 1], fill=colour)
            else:
                draw.polygon(_polygon(shape, cx, cy, r, rot), fill=colour)
            suffix = "jpg" if image_format == "jpeg" else image_format
            img.save(folder / f"{n:03d}.{suffix}", format=image_format.upper())
    return root
