"""Storage dtypes for class ids."""

from __future__ import annotations

import numpy as np

from fdbpl.errors import InputValueError

__all__ = ["class_id_dtype"]


def class_id_dtype(num_classes: int) -> np.dtype:
    """The smallest integer dtype that holds every class id of C classes.

    ``uint16`` for :math:`C \\le 65535`, ``int32`` beyond. Class ids are never stored
    as floats: float16 represents integers exactly only up to 2048.

    Args:
        num_classes: C, at least 1.

    Example:
        >>> from fdbpl.sparsify import class_id_dtype
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
