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

__all__ = ["PromptSRCLoss"]


class PromptSRCLoss(nn.Module):
    r"""PromptSRC's self-regulating constraints, added to FDBPL's loss for ``promptsrc``.

    See :func:`fdbpl.losses.functional.promptsrc_loss`.

    Args:
        image_weight: :math:`\lambda_1`, the image term's weight (PromptSRC: 10).
        text_weight: :math:`\lambda_2`, the text term's weight (PromptSRC: 25).
        logit_weight: :math:`\lambda_3`, the logit term's weight (PromptSRC: 1).

    Shape:
        - image_features, frozen_image_features: :math:`(N, D)`
        - text_features, frozen_text_features: :math:`(C, D)`
        - logits, frozen_logits: :math:`(N, C)`
        - output: :class:`~fdbpl.losses.functional.promptsrc.PromptSRCLossOutput` of scalars
    """

    def __init__(
        self, image_weight: float = IMAGE_WEIGHT, text_weight: float = TEXT_WEIGHT, logit_weight: float = 1.0
    ) -> None:
        super().__init__()
        self.image_weight, self.text_weight, self.logit_weight = image_weight, text_weight, logit_weight

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
        )

    def extra_repr(self) -> str:
        return f"image_weight={self.image_weight}, text_weight={self.text_weight}, logit_weight={self.logit_weight}"
