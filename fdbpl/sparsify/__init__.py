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
    "entropy",
    "information_weight",
    "sparsify",
    "topk_mr",
    "topk_ms",
]
