"""Module forms of the PCD losses (Eq. 11-16)."""

from __future__ import annotations

import torch
from torch import nn

from fdbpl._checks import check_weights
from fdbpl.losses.functional import (
    Reduction,
    first_order_difference_loss,
    pcd_loss,
    second_order_difference_loss,
)
from fdbpl.losses.functional.reduction import check_reduction
from fdbpl.losses.weights import DEFAULT_WEIGHTS

__all__ = ["FirstOrderDifferenceLoss", "PCDLoss", "SecondOrderDifferenceLoss"]


class FirstOrderDifferenceLoss(nn.Module):
    r"""First-order (intra-class) difference loss, Eq. 11-13.

    See :func:`fdbpl.losses.functional.first_order_difference_loss`.

    Args:
        alpha: :math:`\alpha` of Eq. 13 (default 1.0; the paper gives no value).
        reduction: ``"mean"`` (default, Eq. 13's :math:`1/N`), ``"sum"`` or ``"none"``.

    Shape:
        - image_features: :math:`(N, D)`
        - positive_text_features, negative_text_features: :math:`(C, D)`, or :math:`(N, C, D)`
          per image (CoCoOp); not normalised
        - labels: :math:`(N,)` integer, the teacher's top-1
        - weight: :math:`(N,)`
        - output: scalar, or :math:`(N,)` with ``reduction="none"``

    Example:
        >>> import torch
        >>> from fdbpl.losses import FirstOrderDifferenceLoss
        >>> loss = FirstOrderDifferenceLoss(alpha=0.5)
        >>> f, pos, neg = torch.randn(8, 16), torch.randn(5, 16), torch.randn(5, 16)
        >>> loss(f, pos, neg, torch.randint(0, 5, (8,)), torch.rand(8)).shape
        torch.Size([])
    """

    def __init__(self, alpha: float = DEFAULT_WEIGHTS.alpha, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        check_weights(alpha=alpha)
        self.alpha = alpha
        self.reduction = reduction

    def forward(
        self,
        image_features: torch.Tensor,
        positive_text_features: torch.Tensor,
        negative_text_features: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        return first_order_difference_loss(
            image_features,
            positive_text_features,
            negative_text_features,
            labels,
            weight,
            self.alpha,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, reduction={self.reduction!r}"


class SecondOrderDifferenceLoss(nn.Module):
    r"""Second-order (inter-class) difference loss, Eq. 14-16, fused (no :math:`(N, N, D)` tensor).

    See :func:`fdbpl.losses.functional.second_order_difference_loss`.

    Args:
        delta: the margin :math:`\delta` of Eq. 16 (default 0.1; the paper gives no value).
        reduction: ``"mean"`` (default, Eq. 16's :math:`1/(N(N-1))`), ``"sum"`` or ``"none"``.

    Shape:
        - image_features: :math:`(N, D)`
        - positive_text_features, negative_text_features: :math:`(C, D)`, or :math:`(N, C, D)`
          per image (CoCoOp); not normalised
        - labels: :math:`(N,)` integer, the teacher's top-1
        - weight: :math:`(N,)`
        - output: scalar, or :math:`(N,)` with ``reduction="none"``

    Example:
        >>> import torch
        >>> from fdbpl.losses import SecondOrderDifferenceLoss
        >>> f, pos, neg = torch.randn(8, 16), torch.randn(5, 16), torch.randn(5, 16)
        >>> SecondOrderDifferenceLoss()(f, pos, neg, torch.randint(0, 5, (8,)), torch.rand(8)) >= 0
        tensor(True)
    """

    def __init__(self, delta: float = DEFAULT_WEIGHTS.delta, reduction: Reduction = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        check_weights(delta=delta)
        self.delta = delta
        self.reduction = reduction

    def forward(
        self,
        image_features: torch.Tensor,
        positive_text_features: torch.Tensor,
        negative_text_features: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        return second_order_difference_loss(
            image_features,
            positive_text_features,
            negative_text_features,
            labels,
            weight,
            self.delta,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return f"delta={self.delta}, reduction={self.reduction!r}"


class PCDLoss(nn.Module):
    r"""Prompt-cascaded difference loss:
    :math:`\lambda_{diff1}\mathcal{L}^{(1)}_{diff} + \lambda_{diff2}\mathcal{L}^{(2)}_{diff}` (Eq. 13, 16, 17).

    See :func:`fdbpl.losses.functional.pcd_loss`.

    Args:
        lambda_diff1: :math:`\lambda_{diff1}` of Eq. 17 (default 1.0; the paper gives no value).
        lambda_diff2: :math:`\lambda_{diff2}` of Eq. 17 (default 1.0).
        alpha: :math:`\alpha` of Eq. 13 (default 1.0).
        delta: :math:`\delta` of Eq. 16 (default 0.1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, applied to both terms.
    Shape:
        - image_features: :math:`(N, D)`
        - positive_text_features, negative_text_features: :math:`(C, D)`, or :math:`(N, C, D)`
          per image (CoCoOp); not normalised
        - labels: :math:`(N,)` integer, the teacher's top-1
        - weight: :math:`(N,)`
        - output: scalar, or :math:`(N,)` with ``reduction="none"``

    Example:
        >>> import torch
        >>> from fdbpl.losses import PCDLoss
        >>> f, pos, neg = torch.randn(8, 16), torch.randn(5, 16), torch.randn(5, 16)
        >>> PCDLoss(lambda_diff2=0.5)(f, pos, neg, torch.randint(0, 5, (8,)), torch.rand(8)).shape
        torch.Size([])
    """

    def __init__(
        self,
        lambda_diff1: float = DEFAULT_WEIGHTS.lambda_diff1,
        lambda_diff2: float = DEFAULT_WEIGHTS.lambda_diff2,
        alpha: float = DEFAULT_WEIGHTS.alpha,
        delta: float = DEFAULT_WEIGHTS.delta,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        check_weights(lambda_diff1=lambda_diff1, lambda_diff2=lambda_diff2, alpha=alpha, delta=delta)
        self.lambda_diff1 = lambda_diff1
        self.lambda_diff2 = lambda_diff2
        self.alpha = alpha
        self.delta = delta
        self.reduction = reduction

    def forward(
        self,
        image_features: torch.Tensor,
        positive_text_features: torch.Tensor,
        negative_text_features: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        return pcd_loss(
            image_features,
            positive_text_features,
            negative_text_features,
            labels,
            weight,
            self.lambda_diff1,
            self.lambda_diff2,
            self.alpha,
            self.delta,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"lambda_diff1={self.lambda_diff1}, lambda_diff2={self.lambda_diff2}, "
            f"alpha={self.alpha}, delta={self.delta}, reduction={self.reduction!r}"
        )
