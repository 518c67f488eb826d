r"""PromptSRC's self-regulating constraints (Khattak et al., ICCV 2023, Eq. 2-4 of its paper).

PromptSRC keeps deep prompts close to the frozen CLIP they start from, with three terms
added to the training loss:

.. math::

    \mathcal{L}_{SCL\text{-}image} = \frac{1}{N D}\sum_{i,d}
        \left|\hat f_p(x_i)_d - \hat f(x_i)_d\right|, \qquad
    \mathcal{L}_{SCL\text{-}text} = \frac{1}{C D}\sum_{c,d}
        \left|\hat g_p(c)_d - \hat{\bar g}(c)_d\right|,

    \mathcal{L}_{SCL\text{-}logits} = \frac{1}{N C}\sum_i
        D_{KL}\!\left(\operatorname{softmax}(z_i) \,\|\, \operatorname{softmax}(z^p_i)\right),

with :math:`\hat{\cdot}` L2 normalisation; :math:`f_p, g_p` the prompted image and text
features, :math:`f` the frozen image features, :math:`\bar g(c)` the frozen text features
of class :math:`c` averaged over a set of hand-written templates (the "template ensemble"),
:math:`z^p` the prompted logits and :math:`z` the frozen zero-shot ones. The total is
:math:`\lambda_1 \mathcal{L}_{SCL\text{-}image} + \lambda_2 \mathcal{L}_{SCL\text{-}text} +
\mathcal{L}_{SCL\text{-}logits}`, with PromptSRC's base-to-new weights
:math:`\lambda_1 = 10`, :math:`\lambda_2 = 25`. The :math:`1/(NC)` of the logit term is
the reference code's (``kl_div(..., reduction="sum") / logits.numel()``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from fdbpl._checks import check_all_finite, check_floating, check_ndim, check_number, compute_dtype, shape_str
from fdbpl.errors import ShapeError
from fdbpl.logits import NORM_EPS
from fdbpl.losses.functional.reduction import Reduction, check_reduction, reduce

__all__ = [
    "IMAGE_WEIGHT",
    "TEXT_WEIGHT",
    "PromptSRCLossOutput",
    "feature_consistency_loss",
    "logit_consistency_loss",
    "promptsrc_loss",
]

#: PromptSRC's base-to-new weight of the image term (``IMAGE_LOSS_WEIGHT``).
IMAGE_WEIGHT = 10.0
#: PromptSRC's base-to-new weight of the text term (``TEXT_LOSS_WEIGHT``).
TEXT_WEIGHT = 25.0


def _check_pair(name: str, prompted: torch.Tensor, frozen: torch.Tensor, layout: str) -> None:
    check_ndim(name, prompted, 2, layout)
    check_ndim(f"frozen_{name}", frozen, 2, layout)
    for n, t in ((name, prompted), (f"frozen_{name}", frozen)):
        check_floating(n, t)
    if prompted.shape != frozen.shape:
        raise ShapeError(
            f"{name} and frozen_{name} must have the same shape {layout}, "
            f"got {shape_str(prompted)} and {shape_str(frozen)}"
        )
    check_all_finite((name, prompted), (f"frozen_{name}", frozen))


def feature_consistency_loss(
    features: torch.Tensor, frozen_features: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    r"""PromptSRC's :math:`\mathcal{L}_{SCL\text{-}image}` / :math:`\mathcal{L}_{SCL\text{-}text}`:
    the mean absolute difference of the L2-normalised prompted and frozen features.

    Args:
        features: :math:`(M, D)` prompted features (image features of N images, or text
            features of C classes).
        frozen_features: :math:`(M, D)` the frozen CLIP's (a target: no gradient).
        reduction: over the M rows, of each row's mean over D: ``"mean"`` (default),
            ``"sum"`` or ``"none"``.

    Returns:
        ``"mean"``: a scalar, :math:`\frac{1}{MD}\sum |\hat a - \hat b|`; ``"none"``: the
        :math:`(M,)` row terms :math:`\frac{1}{D}\sum_d |\hat a_d - \hat b_d|`; ``"sum"``
        their sum.
    """
    _check_pair("features", features, frozen_features, "(M, D)")
    check_reduction(reduction)
    dtype = compute_dtype(features, frozen_features)
    a = F.normalize(features.to(dtype), dim=1, eps=NORM_EPS)
    b = F.normalize(frozen_features.detach().to(dtype), dim=1, eps=NORM_EPS)
    return reduce((a - b).abs().mean(dim=1), reduction)


def logit_consistency_loss(
    logits: torch.Tensor, frozen_logits: torch.Tensor, reduction: Reduction = "mean"
) -> torch.Tensor:
    r"""PromptSRC's :math:`\mathcal{L}_{SCL\text{-}logits}`:
    :math:`\frac{1}{NC}\sum_i D_{KL}(\operatorname{softmax}(z_i) \| \operatorname{softmax}(z^p_i))`.

    Args:
        logits: :math:`(N, C)` the prompted model's logits :math:`z^p`.
        frozen_logits: :math:`(N, C)` the frozen CLIP's zero-shot logits :math:`z` (a target).
        reduction: over the N images, of :math:`D_{KL,i} / C`: ``"mean"`` (default, the
            reference code's ``sum / numel``), ``"sum"`` or ``"none"``.

    Returns:
        A scalar, or the :math:`(N,)` terms with ``"none"``.
    """
    _check_pair("logits", logits, frozen_logits, "(N, C)")
    check_reduction(reduction)
    dtype = compute_dtype(logits, frozen_logits)
    log_p = F.log_softmax(logits.to(dtype), dim=1)
    log_t = F.log_softmax(frozen_logits.detach().to(dtype), dim=1)
    return reduce((log_t.exp() * (log_t - log_p)).sum(dim=1) / max(logits.shape[1], 1), reduction)


class PromptSRCLossOutput(NamedTuple):
    """The self-regulating total and its three parts (unweighted), for logging."""

    total: torch.Tensor
    image: torch.Tensor
    text: torch.Tensor
    logits: torch.Tensor


def promptsrc_loss(
    image_features: torch.Tensor,
    frozen_image_features: torch.Tensor,
    text_features: torch.Tensor,
    frozen_text_features: torch.Tensor,
    logits: torch.Tensor,
    frozen_logits: torch.Tensor,
    image_weight: float = IMAGE_WEIGHT,
    text_weight: float = TEXT_WEIGHT,
    logit_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> PromptSRCLossOutput:
    r"""PromptSRC's self-regulating constraints:
    :math:`\lambda_1 \mathcal{L}_{SCL\text{-}image} + \lambda_2 \mathcal{L}_{SCL\text{-}text}
    + \lambda_3 \mathcal{L}_{SCL\text{-}logits}` (see the module docs).

    Args:
        image_features, frozen_image_features: :math:`(N, D)` prompted and frozen image features.
        text_features, frozen_text_features: :math:`(C, D)` prompted text features and the
            frozen template ensemble.
        logits, frozen_logits: :math:`(N, C)` prompted and frozen zero-shot logits.
        image_weight, text_weight, logit_weight: :math:`\lambda_{1,2,3}` (PromptSRC: 10, 25, 1).
        reduction: over the N images, as FDBPL's losses: ``"mean"`` (default, PromptSRC's
            terms), ``"sum"`` or ``"none"`` (the :math:`(N,)` terms). The text term belongs
            to no one image: it counts the same for each (``"none"``: repeated N times;
            ``"sum"``: N times the class mean), so ``total = image_weight * image +
            text_weight * text + logit_weight * logits`` in every reduction, and the
            ``"none"`` terms average to the ``"mean"`` ones.

    Returns:
        :class:`PromptSRCLossOutput` ``(total, image, text, logits)``.
    """
    for name, value in (
        ("image_weight", image_weight),
        ("text_weight", text_weight),
        ("logit_weight", logit_weight),
    ):
        check_number(name, value, minimum=0.0)
    check_reduction(reduction)
    image = feature_consistency_loss(image_features, frozen_image_features, reduction)
    text = feature_consistency_loss(text_features, frozen_text_features)
    kl = logit_consistency_loss(logits, frozen_logits, reduction)
    n = logits.shape[0]
    text = reduce(text.expand(n), reduction) if reduction != "mean" else text
    return PromptSRCLossOutput(image_weight * image + text_weight * text + logit_weight * kl, image, text, kl)
