"""Shannon entropy of dense or sparse soft labels, and the information weight of Eq. 6."""

from __future__ import annotations

import math

import torch

from fdbpl._checks import check_number, check_probabilities, compute_dtype
from fdbpl.sparsify.labels import SparseSoftLabels

__all__ = ["entropy", "information_weight"]


def _plogp(p: torch.Tensor, eps: float) -> torch.Tensor:
    # eps = 0 takes the exact limit 0 * log 0 = 0; eps > 0 is the paper's log(p + eps).
    return torch.xlogy(p, p) if eps == 0 else p * torch.log(p + eps)


def entropy(labels: torch.Tensor | SparseSoftLabels, eps: float = 0.0) -> torch.Tensor:
    r"""Per-row entropy :math:`H = -\sum_c p_c \log(p_c + \epsilon)` in nats.

    For :class:`SparseSoftLabels` the sum runs over the K stored entries plus, exactly,
    the :math:`C - K` classes that each hold ``fill`` (MS labels); no dense tensor is built.

    Args:
        labels: :math:`(N, C)` probabilities or :class:`SparseSoftLabels`.
        eps: :math:`\epsilon` inside the logarithm as in Eq. 6. The default 0 uses the
            exact limit :math:`0 \log 0 = 0`.

    Returns:
        :math:`(N,)` entropies, float32 for half inputs, else the input dtype.

    Example:
        >>> import torch
        >>> from fdbpl.sparsify import entropy
        >>> entropy(torch.full((1, 4), 0.25))
        tensor([1.3863])
    """
    eps = check_number("eps", eps, minimum=0.0)
    if isinstance(labels, SparseSoftLabels):
        values = labels.values.to(compute_dtype(labels.values))
        fill = labels.fill.to(values.dtype)
        rest = labels.num_classes - labels.topk
        return -(_plogp(values, eps).sum(dim=1) + rest * _plogp(fill, eps))
    check_probabilities("labels", labels)
    probs = labels.to(compute_dtype(labels))
    return -_plogp(probs, eps).sum(dim=1)


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
        >>> from fdbpl.sparsify import information_weight
        >>> information_weight(torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]]))
        tensor([0., 1.])
    """
    h = entropy(probs, eps=eps)
    num_classes = probs.num_classes if isinstance(probs, SparseSoftLabels) else probs.shape[1]
    if num_classes == 1:
        return torch.ones_like(h)
    return (1 - h / math.log(num_classes)).clamp(0, 1)
