"""Image I/O and the input recipe: the one home of decoding, normalising and resizing.

An :class:`InputRecipe` is a model's input as one value (side, mean, std and
interpolation), as timm's data config is. :func:`render_crop` makes the crops of the RIL
table (the teacher's at build time, the student's at replay), :func:`preprocess` is
CLIP's test transform, and both normalise with :func:`normalize`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fdbpl.errors import InputValueError

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "InputRecipe",
    "decode_image",
    "normalize",
    "preprocess",
    "render_crop",
]

#: CLIP's (OpenAI's) normalisation, the default of every open_clip ViT.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

#: PIL modes of 16-bit greyscale images (PNG, TIFF), scaled to 8 bits on decoding.
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class InputRecipe:
    """A model's input: square side, per-channel mean and std of ``[0, 1]`` pixels, and
    the resampling (bicubic, antialiased) that makes its crops."""

    size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"

    @classmethod
    def of(
        cls,
        recipe: InputRecipe | None = None,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> InputRecipe:
        """``recipe`` if given, else one from the separate ``image_size``, ``mean`` and
        ``std`` that fdbpl's functions also take (CLIP's normalisation by default)."""
        if recipe is not None:
            return recipe
        mean_tuple = tuple(float(v) for v in (mean if mean is not None else OPENAI_MEAN))
        std_tuple = tuple(float(v) for v in (std if std is not None else OPENAI_STD))
        return cls(int(image_size), mean_tuple, std_tuple)  # type: ignore[arg-type]

    @classmethod
    def of_model(cls, model: Any) -> InputRecipe:
        """The input a CLIP model was trained with: open_clip's ``visual.preprocess_cfg``
        (side, mean, std; set by ``open_clip.create_model``), else the image tower's side
        (``visual.image_size``, or OpenAI-clip's ``visual.input_resolution``) with CLIP's
        normalisation.

        Raises:
            InputValueError: a model without an image tower that names its input side.
        """
        visual = getattr(model, "visual", None)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = (
            cfg.get("size")
            or getattr(visual, "image_size", None)
            or getattr(visual, "input_resolution", None)
        )
        if size is None:
            raise InputValueError(
                f"model: {type(model).__name__} has no image tower that names its input size "
                "(model.visual.image_size); pass the recipe explicitly"
            )
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN))
        std = tuple(float(v) for v in cfg.get("std", OPENAI_STD))
        return cls(side, mean, std)  # type: ignore[arg-type]


def normalize(
    pixels: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """``(3, H, W)`` uint8 pixels as float32 ``(pixels / 255 - mean) / std``."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean_t) / std_t


def preprocess(image: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """CLIP's test transform on a uint8 image: resize the short side (bicubic), centre-crop, normalise."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    x = TF.resize(image, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return normalize(TF.center_crop(x, [size, size]), mean, std)


def decode_image(path: str | os.PathLike[str] | bytes) -> torch.Tensor:
    """Decode an image file (a path, or its bytes) to a ``(3, H, W)`` uint8 RGB tensor.

    Other modes are converted; 16-bit greyscale (``I;16``, ``I``) is scaled to 8 bits
    (divided by 257), not clipped at 255 as PIL's own conversion does.
    """
    from PIL import Image

    source = io.BytesIO(path) if isinstance(path, bytes) else path
    with Image.open(source) as img:
        img.load()
        if img.mode in _SIXTEEN_BIT:
            grey = np.asarray(img, dtype=np.float64) / 257.0
            array = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        else:
            rgb = img.convert("RGB") if img.mode != "RGB" else img
            array = np.asarray(rgb, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def render_crop(
    image: torch.Tensor,
    box: tuple[int, int, int, int] | torch.Tensor | np.ndarray,
    flip: bool,
    size: int,
    mean: tuple[float, float, float] | torch.Tensor,
    std: tuple[float, float, float] | torch.Tensor,
) -> torch.Tensor:
    """Cut, resize (bicubic, antialiased, on uint8), flip and normalise one crop.

    Args:
        image: ``(3, H, W)`` uint8 RGB.
        box: ``(top, left, height, width)`` in source pixels.
        flip: mirror left-right after resizing.
        size: output side S.
        mean, std: per-channel normalisation of ``[0, 1]`` pixel values.

    Returns:
        ``(3, S, S)`` float32.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    top, left, height, width = (int(v) for v in box)
    crop = TF.resized_crop(
        image, top, left, height, width, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    if flip:
        crop = crop.flip(-1)
    return normalize(crop, mean, std)
