r"""KgCoOp's knowledge-guided term (Yao et al., CVPR 2023), as its authors' code computes it.

KgCoOp keeps the learned prompts' text features close to the hand-crafted prompts' text
features of the frozen CLIP ("a photo of a {}." or the dataset's template):

.. math::

    \mathcal{L}_{kg} = \lambda \Big(1 - \frac{1}{C} \sum_{c=1}^{C} \cos(w_c, w^{clip}_c)\Big)

The paper writes the mean squared distance :math:`\frac{1}{C}\sum_c \|w_c - w^{clip}_c\|^2`
of the L2-normalised features, which is twice this; the authors' code (htyao89/KgCoOp,
``trainers/kgcoop.py``), which made the published numbers, computes one minus the mean
cosine similarity (``CosineSimilarity(eps=1e-7)``), with :math:`\lambda` = ``TRAINER.COOP.W``,
8.0 in its base-to-new runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdbpl._checks import check_all_finite, check_floating, check_ndim, check_number, compute_dtype, shape_str
from fdbpl.errors import ShapeError

__all__ = ["KGCOOP_WEIGHT", "kgcoop_loss"]

#: KgCoOp's weight :math:`\lambda` in its base-to-new runs (``TRAINER.COOP.W 8.0``).
KGCOOP_WEIGHT = 8.0
#: The cosine similarity's ``eps`` in the authors' code.
COSINE_EPS = 1e-7


def kgcoop_loss(
    text_features: torch.Tensor, handcrafted_text_features: torch.Tensor, weight: float = KGCOOP_WEIGHT
) -> torch.Tensor:
    r"""KgCoOp's term :math:`\lambda (1 - \frac{1}{C}\sum_c \cos(w_c, w^{clip}_c))`.

    Args:
        text_features: :math:`(C, D)` the learned prompts' text features (any norm).
        handcrafted_text_features: :math:`(C, D)` the frozen CLIP's features of the
            hand-crafted prompts of the same classes (a target: no gradient).
        weight: :math:`\lambda \ge 0`.

    Returns:
        A scalar in :math:`[0, 2\lambda]`.

    Raises:
        ShapeError: not two floating :math:`(C, D)` tensors of one shape.
        ValueError: non-finite features, or a negative or non-finite weight. (A row of
            zeros has no direction: as in the authors' code, its cosine is NaN.)

    Example:
        >>> import torch
        >>> from fdbpl.losses.functional import kgcoop_loss
        >>> w = torch.randn(5, 8)
        >>> abs(float(kgcoop_loss(w, 3 * w))) < 1e-6  # the same direction: no loss
        True
    """
    check_ndim("text_features", text_features, 2, "(C, D)")
    check_ndim("handcrafted_text_features", handcrafted_text_features, 2, "(C, D)")
    for name, t in (
        ("text_features", text_features),
        ("handcrafted_text_features", handcrafted_text_features),
    ):
        check_floating(name, t)
    if text_features.shape != handcrafted_text_features.shape:
        raise ShapeError(
            "text_features and handcrafted_text_features must have the same shape (C, D), got "
            f"{shape_str(text_features)} and {shape_str(handcrafted_text_features)}"
        )
    if text_features.shape[0] == 0:
        raise ShapeError("text_features: expected at least one class, got shape (0, D)")
    check_all_finite(
        ("text_features", text_features), ("handcrafted_text_features", handcrafted_text_features)
    )
    weight = check_number("weight", weight, minimum=0.0)
    dtype = compute_dtype(text_features, handcrafted_text_features)
    a = text_features.to(dtype)
    b = handcrafted_text_features.detach().to(dtype)
    # the authors' order: both normalised, then cosine similarity with eps = 1e-7
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    cosine = F.cosine_similarity(a, b, dim=1, eps=COSINE_EPS)
    return weight * (1.0 - cosine.mean())
