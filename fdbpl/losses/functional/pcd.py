"""Prompt-cascaded difference (PCD) losses: first order (Eq. 11-13), second order (Eq. 14-16)."""

from __future__ import annotations

import torch

from fdbpl._checks import (
    check_floating,
    check_labels,
    check_ndim,
    check_reduction,
    check_weight,
    compute_dtype,
    shape_str,
)
from fdbpl.errors import ShapeError
from fdbpl.losses.functional._reduce import reduce
from fdbpl.losses.functional.radp import Reduction

__all__ = ["NORM_EPS", "first_order_difference_loss", "second_order_difference_loss"]

#: Norms below this are clamped to it before dividing, so a zero difference vector (or a
#: zero image feature) gives a cosine of 0 with finite gradients instead of NaN.
NORM_EPS = 1e-8


def _check_features(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    reduction: str,
) -> None:
    check_ndim("image_features", image_features, 2, "(N, D)")
    check_ndim("positive_text_features", positive_text_features, 2, "(C, D)")
    check_ndim("negative_text_features", negative_text_features, 2, "(C, D)")
    for name, t in (
        ("image_features", image_features),
        ("positive_text_features", positive_text_features),
        ("negative_text_features", negative_text_features),
    ):
        check_floating(name, t)
    if positive_text_features.shape != negative_text_features.shape:
        raise ShapeError(
            "positive_text_features and negative_text_features must have the same shape (C, D), "
            f"got {shape_str(positive_text_features)} and {shape_str(negative_text_features)}"
        )
    if image_features.shape[1] != positive_text_features.shape[1]:
        raise ShapeError(
            "image_features (N, D) and positive_text_features (C, D) must share D, "
            f"got {shape_str(image_features)} and {shape_str(positive_text_features)}"
        )
    n, num_classes = image_features.shape[0], positive_text_features.shape[0]
    check_labels("labels", labels, n, num_classes)
    check_weight("weight", weight, n)
    check_reduction(reduction)


def _common_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, compute_dtype(t))
    return dtype


def first_order_difference_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    alpha: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""First-order (intra-class) difference loss, Eq. 11-13.

    .. math::

        D^{(1)} = g(V) - g(\bar V), \qquad
        S^{(1)}_i = \cos\!\left(f(x_i), D^{(1)}_{y_i}\right), \qquad
        \mathcal{L}^{(1)}_{diff} = -\frac{1}{N} \sum_i \left[(1 - w_i) S^{(1)}_i
            + \alpha\, w_i (1 - S^{(1)}_i)\right]

    The text features are differenced as given, as in the paper, which differences the
    text encoder's outputs before normalising (pass normalised features to difference
    normalised ones). The cosine normalises :math:`D^{(1)}` and :math:`f(x_i)`, so the
    scale of ``image_features`` does not matter. Norms are clamped below at
    :data:`NORM_EPS`.

    Args:
        image_features: :math:`(N, D)` image features :math:`f(x_i)`.
        positive_text_features: :math:`(C, D)` text features of the positive prompts, :math:`g(V)`.
        negative_text_features: :math:`(C, D)` text features of the negative prompts, :math:`g(\bar V)`.
        labels: :math:`(N,)` integer pseudo hard labels :math:`y_i`, the teacher's top-1
            (:attr:`fdbpl.sparsify.SparseSoftLabels.top1`).
        weight: :math:`(N,)` information weights :math:`w_i \in [0, 1]`.
        alpha: :math:`\alpha`, the weight of the diversity term for informative regions
            (the paper gives no value; 1.0 weighs both terms equally).
        reduction: ``"mean"`` (default) is Eq. 13 with its :math:`1/N`; ``"sum"`` drops the
            :math:`1/N`; ``"none"`` returns the :math:`(N,)` bracketed terms, negated.

    Returns:
        A scalar, or :math:`(N,)` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from fdbpl.losses.functional import first_order_difference_loss
        >>> pos, neg = torch.eye(3), torch.zeros(3, 3)
        >>> f = torch.eye(3)  # each image points along its own class's difference
        >>> first_order_difference_loss(f, pos, neg, torch.arange(3), torch.zeros(3))
        tensor(-1.)
    """
    _check_features(image_features, positive_text_features, negative_text_features, labels, weight, reduction)
    dtype = _common_dtype(image_features, positive_text_features, negative_text_features)
    f = image_features.to(dtype)
    d1 = positive_text_features.to(dtype) - negative_text_features.to(dtype)
    d = d1[labels]
    s1 = (f * d).sum(dim=1) / (f.norm(dim=1).clamp_min(NORM_EPS) * d.norm(dim=1).clamp_min(NORM_EPS))
    w = weight.to(dtype)
    return reduce(-((1 - w) * s1 + alpha * w * (1 - s1)), reduction)


def second_order_difference_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    delta: float = 0.1,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Second-order (inter-class) difference loss, Eq. 14-16, fused.

    .. math::

        D^{(2)}_{c,c'} = D^{(1)}_c - D^{(1)}_{c'}, \qquad
        S^{(2)}_{i,c,c'} = \cos\!\left(f(x_i), D^{(2)}_{c,c'}\right),

        \mathcal{L}^{(2)}_{diff} = \frac{1}{N(N-1)} \sum_{i=1}^N \sum_{j=1}^N
            \mathbf{1}[y_i \ne y_j]\, w_i w_j \max\!\left(0, S^{(2)}_{i,y_i,y_j} + \delta\right)

    The :math:`(N, N, D)` tensor of difference vectors is never built. With
    :math:`E = D^{(1)}_{y} - \operatorname{mean}_j D^{(1)}_{y_j}` (the batch's difference
    vectors, centred), :math:`f_i \cdot D^{(2)}_{y_i, y_j} = P_{ii} - P_{ij}` with
    :math:`P = f E^\top` and :math:`\|D^{(2)}_{y_i,y_j}\|^2 = G_{ii} + G_{jj} - 2G_{ij}`
    with :math:`G = E E^\top`: two :math:`N \times D \times N` products, memory
    :math:`O(ND + N^2)`, static shapes (it traces and compiles) and no host
    synchronisation. Centring changes nothing mathematically (differences ignore a
    common shift) but keeps float32 accurate: the positive and negative prompts differ by
    one word, so the difference vectors share a large common component and the
    uncentred Gram expansion would cancel catastrophically.

    Zero norms: when two classes have identical difference vectors (or an image feature
    is zero), the squared norm is clamped below at :data:`NORM_EPS` squared; the numerator
    is then 0 too, so the cosine is 0, the term is :math:`\max(0, \delta) w_i w_j`, and
    values and gradients stay finite. A batch with a single class gives exactly 0, and
    so does :math:`N = 1`.

    Args:
        image_features: :math:`(N, D)` image features :math:`f(x_i)`.
        positive_text_features: :math:`(C, D)` positive-prompt text features :math:`g(V)`.
        negative_text_features: :math:`(C, D)` negative-prompt text features :math:`g(\bar V)`.
        labels: :math:`(N,)` integer pseudo hard labels :math:`y_i` (the teacher's top-1).
        weight: :math:`(N,)` information weights :math:`w_i \in [0, 1]`.
        delta: the margin :math:`\delta`, "a small constant" in the paper, which gives no
            value; the default 0.1 is ours.
        reduction: ``"mean"`` (default) is Eq. 16 with its :math:`1/(N(N-1))`; ``"sum"`` is
            the double sum without it; ``"none"`` returns the :math:`(N,)` per-anchor terms
            :math:`\frac{1}{N-1}\sum_j (\dots)`, whose mean is the ``"mean"`` reduction.

    Returns:
        A scalar, or :math:`(N,)` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from fdbpl.losses.functional import second_order_difference_loss
        >>> pos, neg = torch.eye(2), torch.zeros(2, 2)
        >>> f = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])  # aligned with D1[y_i] - D1[y_j]
        >>> second_order_difference_loss(f, pos, neg, torch.tensor([0, 1]), torch.ones(2), delta=0.0)
        tensor(1.0000)
    """
    _check_features(image_features, positive_text_features, negative_text_features, labels, weight, reduction)
    dtype = _common_dtype(image_features, positive_text_features, negative_text_features)
    n = image_features.shape[0]
    f = image_features.to(dtype)
    d1 = positive_text_features.to(dtype) - negative_text_features.to(dtype)
    e = d1[labels]
    e = e - e.mean(dim=0, keepdim=True)
    p = f @ e.T  # (N, N): P[i, j] = f_i . E_j
    g = e @ e.T  # (N, N): G[i, j] = E_i . E_j
    g_diag = g.diagonal()
    sq_norm = (g_diag[:, None] + g_diag[None, :] - 2 * g).clamp_min(NORM_EPS**2)
    numer = p.diagonal()[:, None] - p
    f_norm = f.norm(dim=1).clamp_min(NORM_EPS)
    s2 = numer / (f_norm[:, None] * sq_norm.sqrt())
    w = weight.to(dtype)
    mask = labels[:, None] != labels[None, :]
    terms = torch.where(mask, (w[:, None] * w[None, :]) * torch.relu(s2 + delta), 0.0)
    per_anchor = terms.sum(dim=1)
    if reduction == "sum":
        return per_anchor.sum()
    return reduce(per_anchor / max(n - 1, 1), reduction)
