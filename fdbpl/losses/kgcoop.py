"""Module form of KgCoOp's knowledge-guided term (see :mod:`fdbpl.losses.functional.kgcoop`)."""

from __future__ import annotations

import torch
from torch import nn

from fdbpl._checks import check_number
from fdbpl.losses.functional.kgcoop import KGCOOP_WEIGHT, kgcoop_loss

__all__ = ["KgCoOpLoss"]


class KgCoOpLoss(nn.Module):
    r"""KgCoOp's term :math:`\lambda (1 - \frac{1}{C}\sum_c \cos(w_c, w^{clip}_c))`, added to
    FDBPL's loss for ``kgcoop``. See :func:`fdbpl.losses.functional.kgcoop_loss`.

    Args:
        weight: :math:`\lambda` (KgCoOp: 8.0).

    Shape:
        - text_features, handcrafted_text_features: :math:`(C, D)`
        - output: scalar

    Example:
        >>> import torch
        >>> from fdbpl.losses import KgCoOpLoss
        >>> KgCoOpLoss(weight=8.0)(torch.randn(4, 16), torch.randn(4, 16)).ndim
        0
    """

    def __init__(self, weight: float = KGCOOP_WEIGHT) -> None:
        super().__init__()
        self.weight = check_number("weight", weight, minimum=0.0)

    def forward(self, text_features: torch.Tensor, handcrafted_text_features: torch.Tensor) -> torch.Tensor:
        return kgcoop_loss(text_features, handcrafted_text_features, self.weight)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"
