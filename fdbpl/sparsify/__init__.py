"""Top-K soft labels: marginal smoothing (MS, Eq. 4), marginal re-norm (MR, Eq. 5), and the
entropy and information weight (Eq. 6) of a label distribution.

:class:`SparseSoftLabels` holds N rows of Top-K teacher labels; the losses of
:mod:`fdbpl.losses` consume it without building the dense ``(N, C)`` tensor.
This subpackage imports neither open_clip nor torchvision.
"""

from fdbpl.sparsify.entropy import entropy, information_weight
from fdbpl.sparsify.labels import SparseSoftLabels
from fdbpl.sparsify.topk import Strategy, sparsify, topk_mr, topk_ms

__all__ = [
    "SparseSoftLabels",
    "Strategy",
    "class_id_dtype",
    "entropy",
    "information_weight",
    "sparsify",
    "topk_mr",
    "topk_ms",
]


def __getattr__(name: str) -> object:
    # class_id_dtype moved to the table's codec (fdbpl.cache.codec); the old name keeps working.
    if name == "class_id_dtype":
        from fdbpl.cache.codec import class_id_dtype

        return class_id_dtype
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
