"""CLIP's similarity logits (Eq. 7-8), shared by the prompt learners and the losses.

A small neutral module: :mod:`fdbpl.prompts` and :mod:`fdbpl.losses` both import it, so
neither has to import the other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fdbpl._checks import check_finite, check_ndim, compute_dtype, shape_str, value_checks_enabled
from fdbpl.errors import InputValueError, ShapeError

__all__ = [
    "CLIP_LOGIT_SCALE",
    "NORM_EPS",
    "check_logit_scale",
    "clip_logits",
    "clip_logits_unchecked",
    "logit_scale_of",
]

#: CLIP's trained temperature: ``logit_scale.exp()`` is 100 for the OpenAI models.
CLIP_LOGIT_SCALE = 100.0

#: A difference vector or feature whose norm is at most this counts as zero: its cosine
#: is 0 and it passes no gradient (instead of NaN, or a gradient of 1 / norm).
NORM_EPS = 1e-8


def logit_scale_of(model: Any) -> torch.Tensor | float:
    """A CLIP model's logit multiplier :math:`1/\tau`, ``logit_scale.exp()`` (detached), or
    :data:`CLIP_LOGIT_SCALE` for a model without one."""
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        return scale.detach().exp()
    return CLIP_LOGIT_SCALE


def check_logit_scale(logit_scale: float | torch.Tensor) -> None:
    """Refuse a logit multiplier that is not a positive finite number or 0-d tensor."""
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
    check_logit_scale(logit_scale)
    return clip_logits_unchecked(image_features, text_features, logit_scale)


def clip_logits_unchecked(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """:func:`clip_logits` without its checks, for callers that checked the inputs once."""
    dtype = compute_dtype(image_features, text_features)
    f = F.normalize(image_features.to(dtype), dim=1, eps=NORM_EPS)
    t = F.normalize(text_features.to(dtype), dim=1, eps=NORM_EPS)
    return logit_scale * (f @ t.T)
