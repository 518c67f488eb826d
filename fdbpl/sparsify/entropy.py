"""Shannon entropy of dense or sparse soft labels."""

from __future__ import annotations

import torch

from fdbpl._checks import check_number, check_probabilities, compute_dtype
from fdbpl.sparsify.labels import SparseSoftLabels

__all__ = ["entropy"]


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
