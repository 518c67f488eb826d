"""Top-K label sparsification: marginal smoothing (Eq. 4) and marginal re-norm (Eq. 5)."""

from __future__ import annotations

import numbers
from typing import Literal

import torch

from fdbpl._checks import check_probabilities, compute_dtype
from fdbpl.errors import InputValueError
from fdbpl.sparsify.labels import SparseSoftLabels

__all__ = ["STRATEGIES", "Strategy", "sparsify", "topk_mr", "topk_ms"]

Strategy = Literal["mr", "ms"]
#: The two sparsification strategies: MR (Eq. 5) and MS (Eq. 4).
STRATEGIES: tuple[str, ...] = ("mr", "ms")


def _check_k(k: int, num_classes: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= num_classes:
        raise InputValueError(f"k: expected an integer with 1 <= k <= C={num_classes}, got {k!r}")
    return int(k)


def _top_k(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K largest entries of each row in descending order, ties to the lower class id.

    A stable sort makes ties deterministic on every device; ``torch.topk`` does not
    promise an order among equal values.
    """
    values, indices = torch.sort(probs, dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def topk_ms(probs: torch.Tensor, k: int) -> SparseSoftLabels:
    r"""Marginal smoothing with Top-K (MS), Eq. 4.

    Keeps the K largest probabilities of each row as they are and spreads the remaining
    mass evenly over the other :math:`C - K` classes:

    .. math::

        y_c^{MS} = \begin{cases} p_c & c \in \text{Top-K} \\
        \dfrac{1 - \sum_{c' \in \text{Top-K}} p_{c'}}{C - K} & \text{otherwise}
        \end{cases}

    (The paper typesets the second case as :math:`1 - \sum p / (C-K)`; the text and the
    requirement that labels sum to 1 fix the brackets as here.) A row whose Top-K mass
    exceeds 1 by round-off gets a fill of 0, never a negative probability.

    Args:
        probs: :math:`(N, C)` teacher probabilities, float16, bfloat16, float32 or float64;
            each row non-negative and summing to 1.
        k: the number of classes kept, :math:`1 \le k \le C`. With :math:`k = C` the
            result equals the input.

    Returns:
        :class:`SparseSoftLabels` with ``values`` :math:`(N, K)` in descending order (ties
        to the lower class id) and ``fill`` :math:`(N,)`, in float32 for half inputs and
        in the input dtype otherwise.

    Raises:
        ValueError: for a tensor that is not 2-D floating, holds NaN/inf or negative
            values, has rows that do not sum to 1, or for ``k`` outside ``[1, C]``.

    Example:
        >>> import torch
        >>> from fdbpl.sparsify import topk_ms
        >>> labels = topk_ms(torch.tensor([[0.5, 0.1, 0.3, 0.1]]), k=2)
        >>> labels.indices, labels.values, labels.fill
        (tensor([[0, 2]]), tensor([[0.5000, 0.3000]]), tensor([0.1000]))
    """
    check_probabilities("probs", probs)
    num_classes = probs.shape[1]
    k = _check_k(k, num_classes)
    values, indices = _top_k(probs.to(compute_dtype(probs)), k)
    if k == num_classes:
        fill = values.new_zeros(values.shape[0])
    else:
        fill = ((1 - values.sum(dim=1)) / (num_classes - k)).clamp_min(0)
    return SparseSoftLabels(indices, values, fill, num_classes, validate=False)


def topk_mr(probs: torch.Tensor, k: int) -> SparseSoftLabels:
    r"""Marginal re-norm with Top-K (MR), Eq. 5.

    Keeps the K largest probabilities of each row, sets every other class to exactly 0
    and re-normalises the kept ones to sum to 1:

    .. math::

        y_c^{MR} = \frac{y_c^{M}}{\sum_{c'} y_{c'}^{M}}, \qquad
        y_c^{M} = \begin{cases} p_c & c \in \text{Top-K} \\ 0 & \text{otherwise}
        \end{cases}

    Args:
        probs: :math:`(N, C)` teacher probabilities, float16, bfloat16, float32 or float64;
            each row non-negative and summing to 1.
        k: the number of classes kept, :math:`1 \le k \le C`.

    Returns:
        :class:`SparseSoftLabels` with ``fill = 0``; ``values`` :math:`(N, K)` keep the
        Top-K order and ratios of the input (float32 for half inputs).

    Raises:
        ValueError: as :func:`topk_ms`.

    Example:
        >>> import torch
        >>> from fdbpl.sparsify import topk_mr
        >>> topk_mr(torch.tensor([[0.5, 0.1, 0.3, 0.1]]), k=2).to_dense()
        tensor([[0.6250, 0.0000, 0.3750, 0.0000]])
    """
    check_probabilities("probs", probs)
    num_classes = probs.shape[1]
    k = _check_k(k, num_classes)
    values, indices = _top_k(probs.to(compute_dtype(probs)), k)
    values = values / values.sum(dim=1, keepdim=True)
    fill = values.new_zeros(values.shape[0])
    return SparseSoftLabels(indices, values, fill, num_classes, validate=False)


def sparsify(probs: torch.Tensor, k: int, strategy: Strategy = "mr") -> SparseSoftLabels:
    """Sparsify teacher probabilities with the named strategy.

    Args:
        probs: :math:`(N, C)` teacher probabilities.
        k: the number of classes kept.
        strategy: ``"mr"`` for :func:`topk_mr` (Eq. 5, the paper's choice at K = 20) or
            ``"ms"`` for :func:`topk_ms` (Eq. 4).

    Returns:
        :class:`SparseSoftLabels`.
    """
    if strategy == "mr":
        return topk_mr(probs, k)
    if strategy == "ms":
        return topk_ms(probs, k)
    raise InputValueError(f"strategy: expected 'mr' or 'ms', got {strategy!r}")
