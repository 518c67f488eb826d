"""Module forms of the RADP losses (Eq. 9, 10)."""

from __future__ import annotations

import torch
from torch import nn

from fdbpl.losses.functional import (
    Reduction,
    negative_uniform_loss,
    positive_distillation_loss,
    radp_loss,
)
from fdbpl.losses.functional.reduction import check_reduction
from fdbpl.losses.weights import DEFAULT_WEIGHTS
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["NegativeUniformLoss", "PositiveDistillationLoss", "RADPLoss"]


class PositiveDistillationLoss(nn.Module):
    r"""Entropy-weighted KL from the teacher to the positive prompts, Eq. 9.

    See :func:`fdbpl.losses.functional.positive_distillation_loss`.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` (Eq. 9 literally) or ``"none"``.

    Shape:
        - student_logits: :math:`(N, C)`
        - teacher: :math:`(N, C)` probabilities or :class:`~fdbpl.sparsify.SparseSoftLabels`
        - weight: :math:`(N,)`
        - output: scalar, or :math:`(N,)` with ``reduction="none"``

    Example:
        >>> import torch
        >>> from fdbpl.losses import PositiveDistillationLoss
        >>> from fdbpl.sparsify import topk_mr
        >>> teacher = topk_mr(torch.softmax(torch.randn(8, 10), dim=1), k=3)
        >>> loss = PositiveDistillationLoss()(torch.randn(8, 10), teacher, torch.rand(8))
        >>> loss.shape
        torch.Size([])
    """

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(
        self, student_logits: torch.Tensor, teacher: torch.Tensor | SparseSoftLabels, weight: torch.Tensor
    ) -> torch.Tensor:
        return positive_distillation_loss(student_logits, teacher, weight, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class NegativeUniformLoss(nn.Module):
    r"""KL from the uniform distribution to the negative prompts, weighted by :math:`1 - w`, Eq. 10.

    See :func:`fdbpl.losses.functional.negative_uniform_loss`.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` (Eq. 10 literally) or ``"none"``.

    Shape:
        - negative_logits: :math:`(N, C)`
        - weight: :math:`(N,)`
        - output: scalar, or :math:`(N,)` with ``reduction="none"``

    Example:
        >>> import torch
        >>> from fdbpl.losses import NegativeUniformLoss
        >>> NegativeUniformLoss()(torch.randn(8, 10), torch.rand(8)) >= 0
        tensor(True)
    """

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, negative_logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return negative_uniform_loss(negative_logits, weight, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class RADPLoss(nn.Module):
    r"""Region-aware dual-prompt loss: :math:`\mathcal{L}_{pos} + \lambda_{neg}\mathcal{L}_{neg}` (Eq. 9, 10, 17).

    See :func:`fdbpl.losses.functional.radp_loss`.

    Args:
        lambda_neg: :math:`\lambda_{neg}` of Eq. 17 (the paper gives no value; default 1.0).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, applied to both terms.

    Shape:
        - positive_logits, negative_logits: :math:`(N, C)`
        - teacher: :math:`(N, C)` probabilities or :class:`~fdbpl.sparsify.SparseSoftLabels`
        - weight: :math:`(N,)`
        - output: scalar, or :math:`(N,)` with ``reduction="none"``

    Example:
        >>> import torch
        >>> from fdbpl.losses import RADPLoss
        >>> teacher = torch.softmax(torch.randn(4, 6), dim=1)
        >>> RADPLoss(lambda_neg=0.5)(torch.randn(4, 6), torch.randn(4, 6), teacher, torch.rand(4)).ndim
        0
    """

    def __init__(self, lambda_neg: float = DEFAULT_WEIGHTS.lambda_neg, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.lambda_neg = lambda_neg
        self.reduction = reduction

    def forward(
        self,
        positive_logits: torch.Tensor,
        negative_logits: torch.Tensor,
        teacher: torch.Tensor | SparseSoftLabels,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        return radp_loss(positive_logits, negative_logits, teacher, weight, self.lambda_neg, self.reduction)

    def extra_repr(self) -> str:
        return f"lambda_neg={self.lambda_neg}, reduction={self.reduction!r}"
