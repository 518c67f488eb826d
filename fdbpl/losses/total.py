"""The FDBPL objective as a module (Eq. 17)."""

from __future__ import annotations

import torch
from torch import nn

from fdbpl._checks import check_weights
from fdbpl.losses.functional import CLIP_LOGIT_SCALE, FDBPLLossOutput, Reduction, fdbpl_loss
from fdbpl.losses.functional.reduction import check_reduction
from fdbpl.losses.weights import DEFAULT_WEIGHTS, LossWeights
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["FDBPLLoss"]


class FDBPLLoss(nn.Module):
    r"""The FDBPL objective, Eq. 17, returning every part for logging.

    .. math::

        \mathcal{L} = \mathcal{L}_{pos} + \lambda_{neg}\mathcal{L}_{neg}
            + \lambda_{diff1}\mathcal{L}^{(1)}_{diff} + \lambda_{diff2}\mathcal{L}^{(2)}_{diff}

    ``forward`` computes the positive and negative logits itself (Eq. 7-8, cosine times
    ``logit_scale``) and takes the pseudo hard labels from the teacher's top-1. See
    :func:`fdbpl.losses.functional.fdbpl_loss`.

    Args:
        lambda_neg: :math:`\lambda_{neg}` (default 1.0). The paper gives no values for
            the weights of Eq. 17, :math:`\alpha` or :math:`\delta`: the defaults weigh
            every part equally and use a margin of 0.1.
        lambda_diff1: :math:`\lambda_{diff1}` (default 1.0).
        lambda_diff2: :math:`\lambda_{diff2}` (default 1.0).
        alpha: :math:`\alpha` of Eq. 13 (default 1.0).
        delta: :math:`\delta` of Eq. 16 (default 0.1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, applied to every part.

    Shape:
        - image_features: :math:`(N, D)`
        - positive_text_features, negative_text_features: :math:`(C, D)`, or :math:`(N, C, D)`
          per image (CoCoOp); not normalised
        - teacher: :math:`(N, C)` probabilities or :class:`~fdbpl.sparsify.SparseSoftLabels`
        - weight: :math:`(N,)`
        - logit_scale: float or 0-d tensor, the multiplier :math:`1/\tau` (CLIP's 100)
        - output: :class:`~fdbpl.losses.functional.FDBPLLossOutput` of scalars
          (:math:`(N,)` each with ``reduction="none"``)

    Example:
        >>> import torch
        >>> from fdbpl.losses import FDBPLLoss
        >>> from fdbpl.sparsify import topk_mr
        >>> teacher = topk_mr(torch.softmax(3 * torch.randn(8, 5), dim=1), k=2)
        >>> f, pos, neg = torch.randn(8, 16), torch.randn(5, 16), torch.randn(5, 16)
        >>> out = FDBPLLoss()(f, pos, neg, teacher, torch.rand(8))
        >>> out._fields
        ('total', 'positive', 'negative', 'first_order', 'second_order')
    """

    def __init__(
        self,
        lambda_neg: float = DEFAULT_WEIGHTS.lambda_neg,
        lambda_diff1: float = DEFAULT_WEIGHTS.lambda_diff1,
        lambda_diff2: float = DEFAULT_WEIGHTS.lambda_diff2,
        alpha: float = DEFAULT_WEIGHTS.alpha,
        delta: float = DEFAULT_WEIGHTS.delta,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        check_weights(
            lambda_neg=lambda_neg,
            lambda_diff1=lambda_diff1,
            lambda_diff2=lambda_diff2,
            alpha=alpha,
            delta=delta,
        )
        self.lambda_neg = lambda_neg
        self.lambda_diff1 = lambda_diff1
        self.lambda_diff2 = lambda_diff2
        self.alpha = alpha
        self.delta = delta
        self.reduction = reduction

    @classmethod
    def from_weights(cls, weights: LossWeights, reduction: Reduction = "mean") -> FDBPLLoss:
        """The loss with these :class:`~fdbpl.losses.LossWeights`."""
        return cls(**weights.as_kwargs(), reduction=reduction)

    @property
    def weights(self) -> LossWeights:
        """Its weights as one value (:class:`~fdbpl.losses.LossWeights`)."""
        return LossWeights(self.lambda_neg, self.lambda_diff1, self.lambda_diff2, self.alpha, self.delta)

    def forward(
        self,
        image_features: torch.Tensor,
        positive_text_features: torch.Tensor,
        negative_text_features: torch.Tensor,
        teacher: torch.Tensor | SparseSoftLabels,
        weight: torch.Tensor,
        logit_scale: float | torch.Tensor = CLIP_LOGIT_SCALE,
    ) -> FDBPLLossOutput:
        return fdbpl_loss(
            image_features,
            positive_text_features,
            negative_text_features,
            teacher,
            weight,
            logit_scale,
            self.lambda_neg,
            self.lambda_diff1,
            self.lambda_diff2,
            self.alpha,
            self.delta,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"lambda_neg={self.lambda_neg}, lambda_diff1={self.lambda_diff1}, "
            f"lambda_diff2={self.lambda_diff2}, alpha={self.alpha}, delta={self.delta}, "
            f"reduction={self.reduction!r}"
        )
