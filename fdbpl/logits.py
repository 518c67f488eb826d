"""CLIP's similarity logits (Eq. 7-8), shared by the prompt learners and the losses.

A small neutral module: :mod:`fdbpl.prompts` and :mod:`fdbpl.losses` both import it, so
neither has to import the other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fdbpl._checks import (
    check_finite,
    check_ndim,
    check_tensor,
    compute_dtype,
    shape_str,
    value_checks_enabled,
)
from fdbpl.errors import InputValueError, ShapeError

__all__ = [
    "CLIP_LOGIT_SCALE",
    "NORM_EPS",
    "check_logit_scale",
    "check_text_features",
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
    ``logit_scale.exp()``), not its logarithm. Text features are class-level
    :math:`(C, D)`, or per image :math:`(N, C, D)` (a CoCoOp learner's: image :math:`i`
    is compared with its own row, :math:`\cos(f(x_i), g_i(V(l_c)))`); the per-image form
    runs as one batched product and normalises no copy of the text features.

    Args:
        image_features: :math:`(N, D)`.
        text_features: :math:`(C, D)`, or :math:`(N, C, D)` per image.
        logit_scale: a positive float or a 0-d tensor (it may carry gradients).

    Returns:
        :math:`(N, C)` logits in the wider dtype of the inputs (at least float32).
    """
    check_ndim("image_features", image_features, 2, "(N, D)")
    check_text_features("text_features", text_features, image_features)
    check_finite("image_features", image_features)
    check_finite("text_features", text_features)
    check_logit_scale(logit_scale)
    return clip_logits_unchecked(image_features, text_features, logit_scale)


def check_text_features(name: str, text_features: torch.Tensor, image_features: torch.Tensor) -> None:
    """Text features :math:`(C, D)`, or :math:`(N, C, D)` per image, that fit ``image_features`` (N, D)."""
    check_tensor(name, text_features)
    if text_features.ndim not in (2, 3):
        raise ShapeError(
            f"{name}: expected 2 dimensions (C, D) or 3 per image (N, C, D), got {text_features.ndim} "
            f"with shape {shape_str(text_features)}"
        )
    if text_features.shape[-1] != image_features.shape[1]:
        layout = "(C, D)" if text_features.ndim == 2 else "(N, C, D)"
        raise ShapeError(
            f"image_features (N, D) and {name} {layout} must share D, "
            f"got {shape_str(image_features)} and {shape_str(text_features)}"
        )
    if text_features.ndim == 3 and text_features.shape[0] != image_features.shape[0]:
        raise ShapeError(
            f"image_features (N, D) and per-image {name} (N, C, D) must share N, "
            f"got {shape_str(image_features)} and {shape_str(text_features)}"
        )


def clip_logits_unchecked(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """:func:`clip_logits` without its checks, for callers that checked the inputs once."""
    dtype = compute_dtype(image_features, text_features)
    f = F.normalize(image_features.to(dtype), dim=1, eps=NORM_EPS)
    t = text_features.to(dtype)
    if t.ndim == 2:
        return logit_scale * (f @ F.normalize(t, dim=1, eps=NORM_EPS).T)
    # per image: (N, C, D) x (N, D, 1), divided by the row norms (what F.normalize divides by)
    dots = torch.bmm(t, f[:, :, None]).squeeze(2)
    return logit_scale * (dots / torch.linalg.vector_norm(t, dim=2).clamp_min(NORM_EPS))
