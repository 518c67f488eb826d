"""Module form of PromptSRC's self-regulating constraints (see :mod:`fdbpl.losses.functional.promptsrc`)."""

from __future__ import annotations

import torch
from torch import nn

from fdbpl.losses.functional.promptsrc import (
    IMAGE_WEIGHT,
    TEXT_WEIGHT,
    PromptSRCLossOutput,
    promptsrc_loss,
)
from fdbpl.losses.functional.reduction import Reduction, check_reduction

__all__ = ["PromptSRCLoss"]


class PromptSRCLoss(nn.Module):
    r"""PromptSRC's self-regulating constraints, added to FDBPL's loss for ``promptsrc``.

    See :func:`fdbpl.losses.functional.promptsrc_loss`.

    Args:
        image_weight: :math:`\lambda_1`, the image term's weight (PromptSRC: 10).
        text_weight: :math:`\lambda_2`, the text term's weight (PromptSRC: 25).
        logit_weight: :math:`\lambda_3`, the logit term's weight (PromptSRC: 1).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``, over the N images
            (see :func:`~fdbpl.losses.functional.promptsrc_loss`).

    Shape:
        - image_features, frozen_image_features: :math:`(N, D)`
        - text_features, frozen_text_features: :math:`(C, D)`
        - logits, frozen_logits: :math:`(N, C)`
        - output: :class:`~fdbpl.losses.functional.promptsrc.PromptSRCLossOutput` of scalars,
          or of :math:`(N,)` terms with ``reduction="none"``
    """

    def __init__(
        self,
        image_weight: float = IMAGE_WEIGHT,
        text_weight: float = TEXT_WEIGHT,
        logit_weight: float = 1.0,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        check_reduction(reduction)
        self.image_weight, self.text_weight, self.logit_weight = image_weight, text_weight, logit_weight
        self.reduction = reduction

    def forward(
        self,
        image_features: torch.Tensor,
        frozen_image_features: torch.Tensor,
        text_features: torch.Tensor,
        frozen_text_features: torch.Tensor,
        logits: torch.Tensor,
        frozen_logits: torch.Tensor,
    ) -> PromptSRCLossOutput:
        return promptsrc_loss(
            image_features,
            frozen_image_features,
            text_features,
            frozen_text_features,
            logits,
            frozen_logits,
            self.image_weight,
            self.text_weight,
            self.logit_weight,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"image_weight={self.image_weight}, text_weight={self.text_weight}, "
            f"logit_weight={self.logit_weight}, reduction={self.reduction!r}"
        )
