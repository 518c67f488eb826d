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

#: Relative resolution of the fused second-order distances, by dtype: a pair with
#: ``||E_i - E_j||^2 <= RESOLUTION * (|E_i|^2 + |E_j|^2) + NORM_EPS**2`` counts as a zero
#: difference.
RESOLUTION: dict[torch.dtype, float] = {
    torch.float32: 64 * torch.finfo(torch.float32).eps,
    torch.float64: 64 * torch.finfo(torch.float64).eps,
}


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
    :data:`~fdbpl.losses.functional.pcd.NORM_EPS`.

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

    Zero norms: when two classes have identical difference vectors, the cosine is
    defined as 0 (the term is :math:`\max(0, \delta)\, w_i w_j`) and the pair passes no
    gradient. In the fused form "identical" means indistinguishable in the dtype: the
    Gram expansion rounds at :data:`~fdbpl.losses.functional.pcd.RESOLUTION` (64 machine
    epsilons) times :math:`\|E_i\|^2 + \|E_j\|^2`, so a pair whose squared distance is
    below that (or below :data:`~fdbpl.losses.functional.pcd.NORM_EPS` squared) is treated
    as zero rather than given a cosine made of round-off. A zero image feature is clamped
    to norm ``NORM_EPS`` and gives cosines of 0. Values and gradients stay finite. A batch
    with a single class gives exactly 0, and so does :math:`N = 1`.

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
    f = f / f.norm(dim=1, keepdim=True).clamp_min(NORM_EPS)
    d1 = positive_text_features.to(dtype) - negative_text_features.to(dtype)
    e = d1.index_select(0, labels)
    e = e - e.mean(dim=0, keepdim=True)
    w = weight.to(dtype)
    pair_weight = torch.where(labels[:, None] != labels[None, :], w[:, None] * w[None, :], 0.0)
    per_anchor = _SecondOrderHinge.apply(f, e, pair_weight, delta)
    if reduction == "sum":
        return per_anchor.sum()
    return reduce(per_anchor / max(n - 1, 1), reduction)


class _SecondOrderHinge(torch.autograd.Function):
    """Per-anchor sums of ``W_ij relu(cos(f_i, E_i - E_j) + delta)`` with a hand-written backward.

    ``f`` (N, D) has unit rows, ``e`` (N, D) holds the centred difference vectors of the
    batch, ``pair_weight`` (N, N) is ``w_i w_j [y_i != y_j]``. Each (N, N) intermediate is
    touched a few times and the backward needs two (N, N) x (N, D) products for ``e``
    (three when ``f`` needs a gradient); autograd's generic chain made about twice as many
    (N, N) passes and one product more.

    A pair whose squared distance is below ``RESOLUTION`` times ``|E_i|^2 + |E_j|^2`` (the
    scale at which the Gram expansion rounds) plus ``NORM_EPS ** 2`` cannot be told from
    zero: its cosine is 0 and it passes no gradient.
    """

    @staticmethod
    def forward(ctx, f, e, pair_weight, delta):  # type: ignore[override]
        e_sq = (e * e).sum(dim=1)
        # ||E_i - E_j||^2 = G_ii + G_jj - 2 G_ij with G = E E^T, one addmm.
        sq_norm = torch.addmm(e_sq[:, None] + e_sq[None, :], e, e.T, alpha=-2)
        half_floor = RESOLUTION[e.dtype] * e_sq + NORM_EPS**2 / 2
        unresolved = sq_norm <= half_floor[:, None] + half_floor[None, :]
        inv_norm = sq_norm.clamp_min_(NORM_EPS**2).rsqrt_().masked_fill_(unresolved, 0.0)
        # f_i . (E_i - E_j) = P_ii - P_ij with P = f E^T; P_ii as a row-wise dot product.
        numer = torch.addmm((f * e).sum(dim=1, keepdim=True).expand_as(inv_norm), f, e.T, alpha=-1)
        s2 = numer.mul_(inv_norm)
        hinge = s2 + delta
        active_weight = pair_weight.masked_fill(hinge <= 0, 0.0)
        ctx.save_for_backward(f, e, s2, inv_norm, active_weight)
        ctx.delta = delta
        return (hinge.mul_(active_weight)).sum(dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        f, e, s2, inv_norm, active_weight = ctx.saved_tensors
        d_numer = torch.mul(active_weight, grad_out[:, None]).mul_(inv_norm)
        # d s2 / d sq = -1/2 numer sq^(-3/2) = -1/2 s2 inv_norm^2; the -1/2 is folded below.
        d_sq = torch.mul(d_numer, s2).mul_(inv_norm)
        d_sq_sym = d_sq + d_sq.T
        # numer_ij = f_i.e_i - f_i.e_j and sq_ij = |e_i|^2 + |e_j|^2 - 2 e_i.e_j give
        # d_e = rowsum(d_numer) f - d_numer^T f + 2 (-1/2) (rowsum(d_sq_sym) e - d_sq_sym e).
        d_e = d_numer.sum(dim=1, keepdim=True) * f - d_sq_sym.sum(dim=1, keepdim=True) * e
        d_e = d_e.addmm_(d_numer.T, f, alpha=-1).addmm_(d_sq_sym, e)
        d_f = None
        if ctx.needs_input_grad[0]:
            d_f = d_numer.sum(dim=1, keepdim=True) * e - d_numer @ e
        d_pair_weight = None
        if ctx.needs_input_grad[2]:
            d_pair_weight = grad_out[:, None] * (s2 + ctx.delta).clamp_min(0)
        return d_f, d_e, d_pair_weight, None
