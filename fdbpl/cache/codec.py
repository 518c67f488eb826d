"""The table's column codec: a teacher's probabilities to stored columns, and back.

Encoding (at build time) and decoding (when a table is read) live here side by side, so
the two cannot drift apart: Top-K class ids in the smallest integer dtype that holds C,
values in float16, the MS fill in float32, and the information weight as a 16-bit
fixed-point number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fdbpl._checks import check_probabilities
from fdbpl.errors import InputValueError
from fdbpl.sparsify import SparseSoftLabels, information_weight, sparsify

__all__ = [
    "WEIGHT_SCALE",
    "class_id_dtype",
    "column_dtypes",
    "decode_labels",
    "decode_weights",
    "encode_features",
    "encode_labels",
]

#: Fixed-point scale of the stored information weight: ``w = q / WEIGHT_SCALE``.
WEIGHT_SCALE = 65535


def class_id_dtype(num_classes: int) -> np.dtype:
    """The smallest integer dtype that holds every class id of C classes.

    ``uint16`` for :math:`C \\le 65535`, ``int32`` beyond. Class ids are never stored
    as floats: float16 represents integers exactly only up to 2048.

    Args:
        num_classes: C, at least 1.

    Example:
        >>> from fdbpl.cache.codec import class_id_dtype
        >>> class_id_dtype(1000), class_id_dtype(100_000)
        (dtype('uint16'), dtype('int32'))
    """
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise InputValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if num_classes <= np.iinfo(np.uint16).max:
        return np.dtype(np.uint16)
    if num_classes <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    raise InputValueError(f"num_classes: at most {np.iinfo(np.int32).max} classes, got {num_classes}")


def column_dtypes(
    num_classes: int, largest_side: int, strategy: str, features: bool = False
) -> dict[str, str]:
    """Each column's dtype for a table of C classes over images of at most ``largest_side`` px
    (``features``: with the student's image features)."""
    dtypes = {
        "box": "uint16" if largest_side <= np.iinfo(np.uint16).max else "int32",
        "flip": "uint8",
        "indices": class_id_dtype(num_classes).name,
        "values": "float16",
        "weight": "uint16",
    }
    if strategy == "ms":
        dtypes["fill"] = "float32"
    if features:
        dtypes["features"] = "float16"
    return dtypes


def encode_labels(probs: torch.Tensor, num_classes: int, topk: int, strategy: str) -> dict[str, np.ndarray]:
    """A teacher's ``(B, C)`` probabilities as stored rows: Top-K ``indices``, ``values``,
    MS ``fill``, and the ``weight`` of Eq. 6 on the full distribution (before sparsifying)."""
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
        "indices": labels.indices.numpy().astype(class_id_dtype(num_classes)),
        "values": labels.values.numpy().astype(np.float16),
        "weight": np.rint(w.double().numpy() * WEIGHT_SCALE).astype(np.uint16),
    }
    if strategy == "ms":
        rows["fill"] = labels.fill.numpy().astype(np.float32)
    return rows


def decode_labels(indices: np.ndarray, values: np.ndarray, fill: Any, num_classes: int) -> SparseSoftLabels:
    """Stored ``(N, K)`` indices and values and ``(N,)`` fill (None for MR) as labels."""
    fill_t = torch.zeros(len(indices), dtype=torch.float32) if fill is None else torch.from_numpy(fill)
    return SparseSoftLabels(
        torch.from_numpy(indices.astype(np.int64)), torch.from_numpy(values), fill_t, num_classes
    )


def encode_features(features: torch.Tensor) -> np.ndarray:
    """The student's ``(B, D)`` normalised image features as stored rows (float16)."""
    return features.detach().cpu().numpy().astype(np.float16)


def decode_weights(stored: np.ndarray) -> np.ndarray:
    """Stored fixed-point weights as float32 :math:`w \\in [0, 1]`."""
    return np.asarray(stored, dtype=np.float32) / np.float32(WEIGHT_SCALE)
