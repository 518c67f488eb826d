"""Combined losses: RADP (Eq. 9 + 10), PCD (Eq. 13 + 16) and the FDBPL objective (Eq. 17)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fdbpl._checks import check_finite, check_ndim, check_probabilities, shape_str, value_checks_enabled
from fdbpl.errors import InputValueError, ShapeError
from fdbpl.losses.functional.pcd import (
    NORM_EPS,
    first_order_difference_loss,
    second_order_difference_loss,
)
from fdbpl.losses.functional.radp import (
    Reduction,
    negative_uniform_loss,
    positive_distillation_loss,
)
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["CLIP_LOGIT_SCALE", "FDBPLLossOutput", "clip_logits", "fdbpl_loss", "pcd_loss", "radp_loss"]

#: CLIP's trained temperature: ``logit_scale.exp()`` is 100 for the OpenAI models.
CLIP_LOGIT_SCALE = 100.0


class FDBPLLossOutput(NamedTuple):
    """The FDBPL objective (Eq. 17) and its four parts, unweighted, for logging.

    ``total = positive + lambda_neg * negative + lambda_diff1 * first_order
    + lambda_diff2 * second_order``.
    """

    total: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    first_order: torch.Tensor
    second_order: torch.Tensor


def _check_logit_scale(logit_scale: float | torch.Tensor) -> None:
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1:
            raise ShapeError(
                f"logit_scale: expected a number or a 0-d tensor, got shape {shape_str(logit_scale)}"
            )
        if not value_checks_enabled():
            return
        value = float(logit_scale.detach())
    else:
        value = logit_scale
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise InputValueError(
            f"logit_scale: expected a positive finite multiplier 1/tau (a model's logit_scale.exp()), got {value!r}"
        )


def clip_logits(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: float | torch.Tensor = CLIP_LOGIT_SCALE,
) -> torch.Tensor:
    r"""CLIP logits, Eq. 7-8: :math:`\text{logit\_scale} \cdot \cos(f(x_i), g(V(l_c)))`.

    ``logit_scale`` is the multiplier :math:`1/\tau` (an open_clip model's
    ``logit_scale.exp()``), not its logarithm.

    Args:
        image_features: :math:`(N, D)`.
        text_features: :math:`(C, D)`.
        logit_scale: a positive float or a 0-d tensor (it may carry gradients).

    Returns:
        :math:`(N, C)` logits in the wider dtype of the inputs (at least float32).
    """
    check_ndim("image_features", image_features, 2, "(N, D)")
    check_ndim("text_features", text_features, 2, "(C, D)")
    if image_features.shape[1] != text_features.shape[1]:
        raise ShapeError(
            "image_features (N, D) and text_features (C, D) must share D, "
            f"got {shape_str(image_features)} and {shape_str(text_features)}"
        )
    check_finite("image_features", image_features)
    check_finite("text_features", text_features)
    _check_logit_scale(logit_scale)
    dtype = torch.promote_types(torch.promote_types(image_features.dtype, text_features.dtype), torch.float32)
    f = F.normalize(image_features.to(dtype), dim=1, eps=NORM_EPS)
    t = F.normalize(text_features.to(dtype), dim=1, eps=NORM_EPS)
    return logit_scale * (f @ t.T)


def radp_loss(
    positive_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    teacher: torch.Tensor | SparseSoftLabels,
    weight: torch.Tensor,
    lambda_neg: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""The similarity paradigm of Eq. 17: :math:`\mathcal{L}_{pos} + \lambda_{neg}\mathcal{L}_{neg}`.

    See :func:`positive_distillation_loss` (Eq. 9) and :func:`negative_uniform_loss` (Eq. 10)
    for the arguments; both logits are :math:`(N, C)`.
    """
    if positive_logits.shape != negative_logits.shape:
        raise ShapeError(
            "positive_logits and negative_logits must have the same shape (N, C), "
            f"got {shape_str(positive_logits)} and {shape_str(negative_logits)}"
        )
    pos = positive_distillation_loss(positive_logits, teacher, weight, reduction)
    return pos + lambda_neg * negative_uniform_loss(negative_logits, weight, reduction)


def pcd_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    lambda_diff1: float = 1.0,
    lambda_diff2: float = 1.0,
    alpha: float = 1.0,
    delta: float = 0.1,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""The difference paradigm of Eq. 17:
    :math:`\lambda_{diff1}\mathcal{L}^{(1)}_{diff} + \lambda_{diff2}\mathcal{L}^{(2)}_{diff}`.

    See :func:`first_order_difference_loss` (Eq. 13) and
    :func:`second_order_difference_loss` (Eq. 16) for the arguments.
    """
    first = first_order_difference_loss(
        image_features, positive_text_features, negative_text_features, labels, weight, alpha, reduction
    )
    second = second_order_difference_loss(
        image_features, positive_text_features, negative_text_features, labels, weight, delta, reduction
    )
    return lambda_diff1 * first + lambda_diff2 * second


def _teacher_top1(teacher: torch.Tensor | SparseSoftLabels) -> torch.Tensor:
    if isinstance(teacher, SparseSoftLabels):
        return teacher.top1
    check_probabilities("teacher", teacher)
    return teacher.argmax(dim=1)


def fdbpl_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    teacher: torch.Tensor | SparseSoftLabels,
    weight: torch.Tensor,
    logit_scale: float | torch.Tensor = CLIP_LOGIT_SCALE,
    lambda_neg: float = 1.0,
    lambda_diff1: float = 1.0,
    lambda_diff2: float = 1.0,
    alpha: float = 1.0,
    delta: float = 0.1,
    reduction: Reduction = "mean",
) -> FDBPLLossOutput:
    r"""The FDBPL objective, Eq. 17, with its parts.

    .. math::

        \mathcal{L} = \mathcal{L}_{pos} + \lambda_{neg}\mathcal{L}_{neg}
            + \lambda_{diff1}\mathcal{L}^{(1)}_{diff} + \lambda_{diff2}\mathcal{L}^{(2)}_{diff}

    The positive and negative logits are computed here (Eq. 7-8, :func:`clip_logits`)
    and the pseudo hard labels of Eq. 12-16 are the teacher's top-1.

    Args:
        image_features: :math:`(N, D)` student image features :math:`f(x_i)`.
        positive_text_features: :math:`(C, D)` :math:`g(V)`, not normalised.
        negative_text_features: :math:`(C, D)` :math:`g(\bar V)`, not normalised.
        teacher: :math:`(N, C)` probabilities or :class:`SparseSoftLabels`.
        weight: :math:`(N,)` information weights, the ones stored in the RIL table.
        logit_scale: :math:`1/\tau` of Eq. 7-8; CLIP's 100 by default.
        lambda_neg, lambda_diff1, lambda_diff2: the weights of Eq. 17. The paper gives no
            values; the defaults weigh every part equally.
        alpha: :math:`\alpha` of Eq. 13.
        delta: :math:`\delta` of Eq. 16.
        reduction: applied to every part; see the part's function.

    Returns:
        :class:`FDBPLLossOutput` ``(total, positive, negative, first_order, second_order)``.
    """
    labels = _teacher_top1(teacher)
    positive = positive_distillation_loss(
        clip_logits(image_features, positive_text_features, logit_scale), teacher, weight, reduction
    )
    negative = negative_uniform_loss(
        clip_logits(image_features, negative_text_features, logit_scale), weight, reduction
    )
    first = first_order_difference_loss(
        image_features, positive_text_features, negative_text_features, labels, weight, alpha, reduction
    )
    second = second_order_difference_loss(
        image_features, positive_text_features, negative_text_features, labels, weight, delta, reduction
    )
    total = positive + lambda_neg * negative + lambda_diff1 * first + lambda_diff2 * second
    return FDBPLLossOutput(total, positive, negative, first, second)
