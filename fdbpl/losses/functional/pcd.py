"""Prompt-cascaded difference (PCD) losses: first order (Eq. 11-13), second order (Eq. 14-16)."""

from __future__ import annotations

import torch

from fdbpl._checks import (
    check_all_finite,
    check_floating,
    check_labels,
    check_ndim,
    check_weight,
    check_weights,
    compute_dtype,
    shape_str,
)
from fdbpl.errors import ShapeError
from fdbpl.logits import NORM_EPS, check_text_features
from fdbpl.losses.functional.per_image import per_image_second_order_cosines
from fdbpl.losses.functional.reduction import Reduction, check_reduction, reduce
from fdbpl.losses.weights import DEFAULT_WEIGHTS

__all__ = [
    "NORM_EPS",
    "distances_built_directly",
    "first_order_difference_loss",
    "pcd_loss",
    "products_dtype",
    "second_order_difference_loss",
    "second_order_path",
]

#: Relative resolution of the fused second-order distances, by the dtype of its products
#: (:func:`products_dtype`): a pair with
#: ``||E_i - E_j||^2 <= RESOLUTION * (|E_i|^2 + |E_j|^2) + NORM_EPS**2`` counts as a zero
#: difference.
RESOLUTION: dict[torch.dtype, float] = {
    torch.float32: 64 * torch.finfo(torch.float32).eps,
    torch.float64: 64 * torch.finfo(torch.float64).eps,
}


def check_features(
    image_features: torch.Tensor, positive_text_features: torch.Tensor, negative_text_features: torch.Tensor
) -> None:
    """Image features :math:`(N, D)` and both spaces' text features, :math:`(C, D)` or per
    image :math:`(N, C, D)`: floating, finite, the same shape in both spaces, the same D."""
    check_ndim("image_features", image_features, 2, "(N, D)")
    check_text_features("positive_text_features", positive_text_features, image_features)
    check_text_features("negative_text_features", negative_text_features, image_features)
    named = (
        ("image_features", image_features),
        ("positive_text_features", positive_text_features),
        ("negative_text_features", negative_text_features),
    )
    for name, t in named:
        check_floating(name, t)
    check_all_finite(*named)
    if positive_text_features.shape != negative_text_features.shape:
        layout = "(C, D)" if positive_text_features.ndim == 2 else "(N, C, D)"
        raise ShapeError(
            f"positive_text_features and negative_text_features must have the same shape {layout}, "
            f"got {shape_str(positive_text_features)} and {shape_str(negative_text_features)}"
        )


def _check_inputs(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    reduction: str,
) -> None:
    check_features(image_features, positive_text_features, negative_text_features)
    n, num_classes = image_features.shape[0], positive_text_features.shape[-2]
    check_labels("labels", labels, n, num_classes)
    check_weight("weight", weight, n)
    check_reduction(reduction)


def _inverse_norm(x: torch.Tensor) -> torch.Tensor:
    """``1 / ||x_i||`` per row, and 0 (with no gradient) where the norm is at most ``NORM_EPS``."""
    norm = x.norm(dim=1)
    return torch.where(norm > NORM_EPS, 1 / norm.clamp_min(NORM_EPS), 0.0)


def first_order_difference_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    alpha: float = DEFAULT_WEIGHTS.alpha,
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
    scale of ``image_features`` does not matter. A difference vector or image feature of
    norm at most :data:`~fdbpl.logits.NORM_EPS` (identical positive and
    negative prompts, say) counts as zero: its cosine is 0 and it passes no gradient, as
    in the second-order loss (the true gradient, :math:`1/\|D^{(1)}\|`, has no bound).

    Args:
        image_features: :math:`(N, D)` image features :math:`f(x_i)`.
        positive_text_features: :math:`(C, D)` text features of the positive prompts, :math:`g(V)`;
            or :math:`(N, C, D)` per image, :math:`g_i(V)` (then
            :math:`S^{(1)}_i = \cos(f(x_i), g_i(V)_{y_i} - g_i(\bar V)_{y_i})`).
        negative_text_features: text features of the negative prompts, :math:`g(\bar V)`,
            the same shape.
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
    _check_inputs(image_features, positive_text_features, negative_text_features, labels, weight, reduction)
    check_weights(alpha=alpha)
    return first_order_unchecked(
        image_features, positive_text_features, negative_text_features, labels, weight, alpha, reduction
    )


def first_order_unchecked(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    alpha: float,
    reduction: Reduction,
) -> torch.Tensor:
    """:func:`first_order_difference_loss` without its checks (inputs checked once by the caller)."""
    dtype = compute_dtype(image_features, positive_text_features, negative_text_features)
    f = image_features.to(dtype)
    labels = labels.long()
    d = _label_rows(positive_text_features, labels).to(dtype) - _label_rows(
        negative_text_features, labels
    ).to(dtype)
    s1 = (f * d).sum(dim=1) * _inverse_norm(f) * _inverse_norm(d)
    w = weight.to(dtype)
    return reduce(-((1 - w) * s1 + alpha * w * (1 - s1)), reduction)


def _label_rows(text_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, D): each item's own class row of (C, D) text features, or of its own (C, D)
    block of per-image (N, C, D) ones."""
    if text_features.ndim == 2:
        return text_features.index_select(0, labels)
    return text_features[torch.arange(labels.shape[0], device=labels.device), labels]


def _class_level(text_features: torch.Tensor) -> torch.Tensor | None:
    """The (C, D) features behind an (N, C, D) ``expand`` of them (stride 0 along N), else None."""
    if text_features.ndim == 2:
        return text_features
    if text_features.stride(0) == 0 or text_features.shape[0] == 1:
        return text_features[0]
    return None


def second_order_difference_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    delta: float = DEFAULT_WEIGHTS.delta,
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
    with :math:`G = E E^\top`: two :math:`N \times D \times N` products forward and
    two (three when the image features need a gradient) in a hand-written backward, the
    whole loss one autograd node; memory :math:`O(ND + N^2)`, static shapes (it traces and
    compiles) and no host synchronisation.
    When the batch has many items per class the sums run over classes instead
    (:math:`P` is :math:`(N, C)`, :math:`G` is :math:`(C, C)`, each class weighted by its
    items' total :math:`w`); :func:`second_order_path` picks whichever multiplies less from
    the shapes.

    Precision: the Gram expansion cancels. The two prompts differ by one word, so the
    difference vectors share a large component (centring removes it), and two classes
    whose difference vectors are nearly the same (prompts of near-synonyms) have a distance
    far below their norms, which the expansion resolves only to about
    :math:`\sqrt{\epsilon}\,(\|E_i\| + \|E_j\|)`. So the centring and the two forward
    products run in float64 (:func:`products_dtype`), the rest in float32: for float32
    inputs the only rounding left in a pair's distance and numerator is that of
    :math:`D^{(1)}` itself, as in the plain float32 formula, however close the classes
    (the tests hold near-tie pairs to within 2x of its error against float64, values and
    gradients). Whatever C the two products take at most :math:`4 N^2 D` flops; what
    float64 costs on each kind of device is in docs/equations.rst.
    Where the products have no wider dtype than the inputs (float64 inputs; float32 ones on
    devices other than ``cpu`` and ``cuda``: ``mps`` has no float64) the distances are built
    directly instead (:func:`distances_built_directly`, :math:`O(M^2 D)`), and only the
    numerators :math:`P_{ii} - P_{ij}` keep a cancellation, linear in
    :math:`\|E\| / \|E_i - E_j\|`. With the Gram expansion, a pair below
    :data:`~fdbpl.losses.functional.pcd.RESOLUTION` (64 machine epsilons of the
    products' dtype) times :math:`\|E_i\|^2 + \|E_j\|^2` is treated as zero.

    Per-image text features: with :math:`(N, C, D)` text features (a CoCoOp learner's),
    each anchor uses its own: :math:`D^{(1)}_i = g_i(V) - g_i(\bar V)` and
    :math:`S^{(2)}_{ij} = \cos(f(x_i), D^{(1)}_{i,y_i} - D^{(1)}_{i,y_j})`. A pair depends
    on :math:`j` only through :math:`y_j`, so the double sum is
    :math:`\sum_i w_i \sum_{c \ne y_i} W_c \max(0, S_{ic} + \delta)` with
    :math:`W_c = \sum_{j: y_j = c} w_j`, over the :math:`(N, C)` table
    :math:`S_{ic} = \cos(f_i, D^{(1)}_{i,y_i} - D^{(1)}_{i,c})`, computed from anchor
    :math:`i`'s :math:`(C, D)` block with the difference vectors built directly, in chunks,
    and a hand-written backward that builds them again (see
    :mod:`fdbpl.losses.functional.per_image`): memory :math:`O(NC)` beyond the
    inputs and one chunk, exact for near ties, static shapes. An ``expand`` of
    :math:`(C, D)` features to :math:`(N, C, D)` is recognised (stride 0) and takes the
    class-level path; it gives the same values either way.

    Zero norms: a pair whose difference vector has norm at most
    :data:`~fdbpl.logits.NORM_EPS` has cosine 0 (the term is :math:`\max(0, \delta)\,
    w_i w_j`) and passes no gradient, as in the first-order loss; so does a zero image
    feature. Values and gradients stay finite; one class, or :math:`N = 1`, gives 0.

    Half precision: half-precision inputs are computed in float32, and a caller's autocast is
    turned off inside (its products would otherwise run in half precision, where the Gram
    expansion cancels).

    Args:
        image_features: :math:`(N, D)` image features :math:`f(x_i)`.
        positive_text_features: :math:`(C, D)` positive-prompt text features :math:`g(V)`, or
            :math:`(N, C, D)` per image (see "Per-image text features" above).
        negative_text_features: negative-prompt text features :math:`g(\bar V)`, the same shape.
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
    _check_inputs(image_features, positive_text_features, negative_text_features, labels, weight, reduction)
    check_weights(delta=delta)
    return second_order_unchecked(
        image_features, positive_text_features, negative_text_features, labels, weight, delta, reduction
    )


def second_order_unchecked(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    delta: float,
    reduction: Reduction,
) -> torch.Tensor:
    """:func:`second_order_difference_loss` without its checks (inputs checked once by the caller)."""
    dtype = compute_dtype(image_features, positive_text_features, negative_text_features)
    n = image_features.shape[0]
    labels = labels.long()
    f = image_features.to(dtype)
    w = weight.to(dtype)
    positive, negative = _class_level(positive_text_features), _class_level(negative_text_features)
    # its products must not run in half precision under a caller's autocast (the Gram
    # expansion cancels): autocast is off here, the dtype is compute_dtype's
    with torch.autocast(f.device.type, enabled=False):
        if positive is None or negative is None:  # text features per image
            s2 = per_image_second_order_cosines(
                f, positive_text_features.to(dtype), negative_text_features.to(dtype), labels
            )
            per_anchor = _per_anchor_from_cosines(s2, labels, w, delta)
        else:
            by_classes = second_order_path(n, positive.shape[0]) == "classes"
            per_anchor = _SecondOrderSums.apply(
                f, positive.to(dtype), negative.to(dtype), labels, w, delta, by_classes
            )
    if reduction == "sum":
        return per_anchor.sum()
    return reduce(per_anchor / max(n - 1, 1), reduction)


def _per_anchor_from_cosines(
    s2: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, delta: float
) -> torch.Tensor:
    """Per-anchor sums of Eq. 16 from the (N, C) per-image cosines ``S_ic``:
    ``w_i sum_{c != y_i} W_c relu(S_ic + delta)``, ``W_c`` the total ``w`` of class c."""
    c = s2.shape[1]
    class_w = w.new_zeros(c).index_add(0, labels, w)
    other = labels[:, None] != torch.arange(c, device=labels.device)[None, :]
    return w * (torch.where(other, class_w[None, :], 0.0) * torch.relu(s2 + delta)).sum(dim=1)


def second_order_path(n: int, c: int) -> str:
    """Which sums the fused second-order loss runs for N items and C classes: ``"items"``
    (four N x D x N products) or ``"classes"`` (two N x D x C and two C x D x C), whichever
    multiplies less (``C (N + C) < 2 N^2``); both give the same values."""
    return "classes" if c * (n + c) < 2 * n * n else "items"


def pcd_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    lambda_diff1: float = DEFAULT_WEIGHTS.lambda_diff1,
    lambda_diff2: float = DEFAULT_WEIGHTS.lambda_diff2,
    alpha: float = DEFAULT_WEIGHTS.alpha,
    delta: float = DEFAULT_WEIGHTS.delta,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""The difference paradigm of Eq. 17:
    :math:`\lambda_{diff1}\mathcal{L}^{(1)}_{diff} + \lambda_{diff2}\mathcal{L}^{(2)}_{diff}`.

    See :func:`first_order_difference_loss` (Eq. 13) and
    :func:`second_order_difference_loss` (Eq. 16) for the arguments. The inputs are
    checked once.
    """
    _check_inputs(image_features, positive_text_features, negative_text_features, labels, weight, reduction)
    check_weights(lambda_diff1=lambda_diff1, lambda_diff2=lambda_diff2, alpha=alpha, delta=delta)
    args = (image_features, positive_text_features, negative_text_features, labels, weight)
    first = first_order_unchecked(*args, alpha, reduction)
    return lambda_diff1 * first + lambda_diff2 * second_order_unchecked(*args, delta, reduction)


def _inverse_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(sq)`` of squared norms, and 0 where the norm is at most ``NORM_EPS``."""
    return sq.clamp_min(NORM_EPS**2).rsqrt_().masked_fill_(sq <= NORM_EPS**2, 0.0)


def _per_anchor(x: torch.Tensor, row_index: torch.Tensor | None) -> torch.Tensor:
    """Each anchor's row of a per-source tensor (the sources are the anchors when ``row_index`` is None)."""
    return x if row_index is None else x.index_select(0, row_index)


def _to_sources(x: torch.Tensor, row_index: torch.Tensor | None, sources: int) -> torch.Tensor:
    """The adjoint of :func:`_per_anchor`: per-anchor rows summed into their sources."""
    if row_index is None:
        return x
    return x.new_zeros(sources, *x.shape[1:]).index_add_(0, row_index, x)


def products_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of the fused second-order loss's centring and forward products for inputs
    of ``dtype`` on ``device``: float64 on ``cpu`` and ``cuda`` (ROCm included), which
    resolves near-tie classes (see :func:`second_order_difference_loss`); ``dtype`` on other
    devices, which may have no float64 (Apple's ``mps``, Intel's consumer ``xpu`` GPUs),
    and there the distances are built directly (:func:`distances_built_directly`)."""
    return torch.float64 if device.type in ("cpu", "cuda") else dtype


def distances_built_directly(dtype: torch.dtype, wide: torch.dtype) -> bool:
    """Whether the fused second-order loss builds its (M, M) distances from the difference
    vectors directly (``torch.cdist`` without matrix products, O(M^2 D) elementwise) instead
    of by the Gram expansion: when its products have no wider dtype than the inputs
    (float64 inputs; devices without float64), in which the expansion's cancellation could
    be absorbed."""
    return wide == dtype


class _SecondOrderSums(torch.autograd.Function):
    r"""Per-anchor sums of Eq. 16 from class-level text features, fused, with a hand-written
    backward: ``sum_j W_ij relu(cos(f_i, e_{r_i} - e_j) + delta)`` over M columns, one of

    - the batch's items (``by_classes`` False): ``e`` (N, D) the items' centred difference
      vectors, anchor i's own vector ``e_i``, ``W_ij = w_i w_j [y_i != y_j]``;
    - the classes (``by_classes`` True): a pair's terms depend on its second item only
      through that item's class, :math:`\sum_j w_i w_j [y_i \ne y_j] h_{i, y_j} = w_i
      \sum_{c \ne y_i} W_c h_{i, c}` with :math:`W_c = \sum_{j: y_j = c} w_j`, so ``e`` is
      (C, D), anchor i's own vector ``e_{y_i}`` and ``W_ic = w_i W_c [c != y_i]``.

    ``e`` is :math:`D^{(1)}` centred on the batch's mean row. With :math:`P = f e^\top` and
    the Gram distances :math:`\|e_a - e_b\|^2 = G_{aa} + G_{bb} - 2 G_{ab}`,
    :math:`G = e e^\top` (M, M): ``f_i . (e_{r_i} - e_j) = P[i, r_i] - P[i, j]``. Both
    products, the centring and the two cancelling sums run in :func:`products_dtype`
    (float64): for float32 inputs the only rounding left in a pair's difference vector is
    that of :math:`D^{(1)}` itself, as in the plain formula, however close two classes
    are; the cosines and everything after are in the inputs' dtype. Where the products are
    no wider than the inputs, ``torch.cdist`` builds the distances directly instead
    (:func:`distances_built_directly`). A pair whose squared distance is at most
    ``NORM_EPS ** 2``, or with the Gram expansion at most ``RESOLUTION`` (of the products'
    dtype) times ``|e_a|^2 + |e_b|^2`` plus that, counts as a zero difference: cosine 0, no
    gradient, as a zero image feature.

    The backward runs in the inputs' dtype: its products carry the distances' gradients
    linearly (no squared cancellation), within the plain formula's rounding. Everything from
    the raw inputs (normalising ``f``, differencing and centring the text features, the
    pair weights) happens inside, so autograd sees one node. Products: forward ``G``
    (M x D x M) and ``P`` (N x D x M); backward ``e``'s gradient from ``P`` (M x N x D) and
    from ``G`` (M x M x D), and one more N x D x M when the image features need a gradient.
    """

    @staticmethod
    def forward(ctx, image_features, positive, negative, labels, w, delta, by_classes):  # type: ignore[override]
        n, c = image_features.shape[0], positive.shape[0]
        dtype = image_features.dtype
        wide = products_dtype(dtype, image_features.device)
        inv_f = _inverse_sqrt(torch.linalg.vecdot(image_features, image_features))
        f = image_features * inv_f[:, None]
        if by_classes:
            row_index = labels
            class_w = w.new_zeros(c).index_add_(0, labels, w)
            counts = w.new_zeros(c).index_add_(0, labels, w.new_ones(n))
            e_wide = (positive - negative).to(wide)
            e_wide -= (counts.to(wide) @ e_wide) / n  # the batch's mean row: each class counted per item
            pair_weight = torch.outer(w, class_w).scatter_(1, labels[:, None], 0.0)  # W_ic [c != y_i]
        else:
            row_index, counts, class_w = None, None, None
            e_wide = (positive.index_select(0, labels) - negative.index_select(0, labels)).to(wide)
            e_wide -= e_wide.mean(dim=0)
            pair_weight = torch.outer(w, w).masked_fill_(labels[:, None] == labels[None, :], 0.0)
        if distances_built_directly(dtype, wide):
            gram_sq = torch.cdist(e_wide, e_wide, compute_mode="donot_use_mm_for_euclid_dist").square_()
            unresolved = gram_sq <= NORM_EPS**2
        else:
            e_sq = torch.linalg.vecdot(e_wide, e_wide)
            gram_sq = torch.addmm(e_sq[None, :], e_wide, e_wide.T, alpha=-2).add_(e_sq[:, None]).to(dtype)
            half_floor = e_sq.mul_(RESOLUTION[wide]).add_(NORM_EPS**2 / 2).to(dtype)
            unresolved = gram_sq <= half_floor[:, None] + half_floor[None, :]
        inv_norm = _per_anchor(
            gram_sq.clamp_min_(NORM_EPS**2).rsqrt_().masked_fill_(unresolved, 0.0), row_index
        )
        # f_i . (e_{r_i} - e_j) = P[i, r_i] - P[i, j] with P = f e^T
        f_wide = f.to(wide)
        if row_index is None:
            own = torch.linalg.vecdot(f_wide, e_wide)[:, None].expand(n, n)
            numer = torch.addmm(own, f_wide, e_wide.T, alpha=-1)
        else:
            p = f_wide @ e_wide.T
            numer = torch.sub(p.gather(1, row_index[:, None]), p)
        s2 = torch.mul(numer, inv_norm, out=inv_norm.new_empty(numer.shape))  # in the inputs' dtype
        hinge = s2 + delta
        active_weight = pair_weight.masked_fill_(hinge <= 0, 0.0)
        e = e_wide.to(dtype)
        ctx.save_for_backward(f, inv_f, e, labels, w, class_w, counts, s2, inv_norm, active_weight)
        ctx.delta, ctx.by_classes, ctx.classes = delta, by_classes, c
        return hinge.mul_(active_weight).sum(dim=1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        f, inv_f, e, labels, w, class_w, counts, s2, inv_norm, active_weight = ctx.saved_tensors
        n, c, m_cols = f.shape[0], ctx.classes, e.shape[0]
        row_index = labels if ctx.by_classes else None
        d_numer = torch.mul(active_weight, grad_out[:, None]).mul_(inv_norm)
        # d s2 / d sq = -1/2 numer sq^(-3/2) = -1/2 s2 inv_norm^2; the -1/2 is folded below.
        d_sq = torch.mul(d_numer, s2).mul_(inv_norm)
        numer_grad_sums = d_numer.sum(dim=1, keepdim=True)  # (N, 1)
        d_image = None
        if ctx.needs_input_grad[0]:
            # d_f_i = sum_j d_numer_ij (e_{r_i} - e_j)
            own = _per_anchor(e, row_index) * numer_grad_sums
            d_f = torch.addmm(own, d_numer, e, alpha=-1)
            # through f = x / |x|: (d_f - f (f . d_f)) / |x|, zero for a zero feature
            d_image = d_f.sub_(f * torch.linalg.vecdot(f, d_f)[:, None]).mul_(inv_f[:, None])
        # From P: d e_{r_i} += rowsum(d_numer)_i f_i and d e_j -= sum_i d_numer_ij f_i.
        d_e = _to_sources(numer_grad_sums * f, row_index, m_cols)
        d_e = d_e.addmm_(d_numer.T, f, alpha=-1)
        # From G, for sq_ab = |e_a - e_b|^2: d e = -rowsum(S) e + S e with S = d_G + d_G^T.
        d_gram = _to_sources(d_sq, row_index, m_cols)
        d_gram_sym = d_gram + d_gram.T
        d_e = d_e.addcmul_(d_gram_sym.sum(dim=1, keepdim=True), e, value=-1).addmm_(d_gram_sym, e)
        # back through the centring (e = D1 - the batch's mean row) and the label gather
        if ctx.by_classes:
            d_d1 = d_e.addr_(counts, d_e.sum(dim=0), alpha=-1 / n)
        else:
            d_d1 = e.new_zeros(c, e.shape[1]).index_add_(0, labels, d_e - d_e.mean(dim=0))
        d_w = None
        if ctx.needs_input_grad[4]:
            d_pair = grad_out[:, None] * (s2 + ctx.delta).clamp_min_(0)
            if ctx.by_classes:  # W_ic = w_i W_c [c != y_i]
                d_pair.scatter_(1, labels[:, None], 0.0)
                d_w = d_pair @ class_w + (d_pair.T @ w).index_select(0, labels)
            else:  # W_ij = w_i w_j [y_i != y_j]
                d_pair.masked_fill_(labels[:, None] == labels[None, :], 0.0)
                d_w = d_pair @ w + d_pair.T @ w
        d_positive = d_d1 if ctx.needs_input_grad[1] else None
        d_negative = -d_d1 if ctx.needs_input_grad[2] else None
        return d_image, d_positive, d_negative, None, d_w, None, None
