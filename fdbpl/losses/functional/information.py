"""The information weight of a region, Eq. 6."""

from __future__ import annotations

import math

import torch

from fdbpl.sparsify import SparseSoftLabels, entropy

__all__ = ["information_weight"]


def information_weight(probs: torch.Tensor | SparseSoftLabels, eps: float = 0.0) -> torch.Tensor:
    r"""The information weight of Eq. 6, :math:`w = 1 - H / \log C`.

    :math:`H = -\sum_c p_c \log(p_c + \epsilon)` is the entropy of a region's class
    distribution, so a uniform distribution has :math:`w = 0` and a one-hot one
    :math:`w = 1`; the result is clamped to :math:`[0, 1]` against round-off. With a
    single class (:math:`\log C = 0`) every distribution is one-hot and ``w = 1``.

    For :class:`SparseSoftLabels` this is the weight of the *sparsified* distribution
    (MS spreads the tail evenly, MR drops it), which is not the teacher's. The RIL
    table (:mod:`fdbpl.cache`) therefore stores the weight of the teacher's full
    distribution, computed before sparsification; use that one for training.

    Args:
        probs: :math:`(N, C)` probabilities or :class:`SparseSoftLabels`.
        eps: :math:`\epsilon` inside the logarithm as in the paper. The default 0 uses
            the exact limit :math:`0 \log 0 = 0`.

    Returns:
        :math:`(N,)` weights in :math:`[0, 1]`, float32 for half inputs, else the input dtype.

    Example:
        >>> import torch
        >>> from fdbpl.losses import information_weight
        >>> information_weight(torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]))
        tensor([0., 1.])
    """
    h = entropy(probs, eps=eps)
    num_classes = probs.num_classes if isinstance(probs, SparseSoftLabels) else probs.shape[1]
    if num_classes == 1:
        return torch.ones_like(h)
    return (1 - h / math.log(num_classes)).clamp(0, 1)
