r"""The second-order cosines of Eq. 15 for text features per image (a CoCoOp learner's).

With text features :math:`g_i(V)` and :math:`g_i(\bar V)` of shape :math:`(N, C, D)` —
image :math:`i` has its own text features for every class — Eq. 11 and 14-15 read per
anchor: :math:`D^{(1)}_i = g_i(V) - g_i(\bar V)` and

.. math::

    S^{(2)}_{ij} = \cos\!\left(f_i,\; D^{(1)}_{i, y_i} - D^{(1)}_{i, y_j}\right).

The pair :math:`(i, j)` depends on :math:`j` only through its class :math:`y_j`, so per
anchor there are only C distinct cosines, :math:`S_{ic} = \cos(f_i, r_i - D^{(1)}_{i,c})`
with :math:`r_i = D^{(1)}_{i,y_i}`, an :math:`(N, C)` table; Eq. 16's double sum over the
batch becomes :math:`w_i \sum_{c \ne y_i} W_c\, \max(0, S_{ic} + \delta)` with
:math:`W_c = \sum_{j: y_j = c} w_j` (:func:`per_image_second_order_cosines` gives the
table, :mod:`fdbpl.losses.functional.pcd` sums it).

The difference vectors are built directly, not through a Gram expansion: anchor
:math:`i`'s :math:`(C, D)` block :math:`r_i - D^{(1)}_{i,c}` is formed, and its products
with :math:`f_i` and its row norms taken — exact where classes are close (the two prompts
of a class differ by one word, so :math:`D^{(1)}` rows share a large component; a
difference of close floats is exact, so no centring is needed and near ties are as
accurate as the plain float32 formula). Anchors run in chunks of at most
:data:`CHUNK_ELEMENTS` elements, the backward pass builds each chunk's block again, and
only the :math:`(N, C)` numerators and inverse norms are kept: memory
:math:`O(NC)` beyond the inputs and the chunk, never :math:`(N, N, D)`; shapes are static.
"""

from __future__ import annotations

import torch

from fdbpl.logits import NORM_EPS

__all__ = ["CHUNK_ELEMENTS", "per_image_second_order_cosines"]

#: The per-image second-order cosines build the difference vectors of at most this many
#: elements at a time (a chunk of anchors times C times D): 4 Mi floats, 16 MiB in float32.
CHUNK_ELEMENTS = 1 << 22


def per_image_second_order_cosines(
    f: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    r""":math:`(N, C)` cosines :math:`S_{ic} = \cos(f_i, D^{(1)}_{i,y_i} - D^{(1)}_{i,c})`.

    Args:
        f: :math:`(N, D)` image features (any norm).
        positive, negative: :math:`(N, C, D)` per-image text features of the two spaces,
            in ``f``'s dtype.
        labels: :math:`(N,)` int64 class ids :math:`y_i`.

    Returns:
        :math:`(N, C)`; 0 where the difference vector or ``f_i`` has norm at most
        :data:`~fdbpl.logits.NORM_EPS` (so at :math:`c = y_i`), which passes no gradient.
    """
    return _PerImageCosines.apply(f, positive, negative, labels)


def _chunks(n: int, c: int, d: int) -> list[slice]:
    rows = max(1, CHUNK_ELEMENTS // max(1, c * d))
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def _differences(
    positive: torch.Tensor, negative: torch.Tensor, labels: torch.Tensor, rows: slice
) -> torch.Tensor:
    """Anchors ``rows``' blocks ``r_i - D1_ic`` (k, C, D), built directly."""
    d1 = positive[rows] - negative[rows]
    own = d1[torch.arange(d1.shape[0], device=d1.device), labels[rows]]
    return d1.neg_().add_(own[:, None, :])


class _PerImageCosines(torch.autograd.Function):
    r"""``cos(f_i, r_i - D1_ic)`` per (anchor, class), chunked, with a hand-written backward.

    With :math:`u_{ic} = r_i - D^{(1)}_{ic}`, :math:`n_{ic} = f_i \cdot u_{ic}`,
    :math:`\rho_{ic} = 1/\|u_{ic}\|` and :math:`S = n \rho / \|f_i\|`: for an upstream
    gradient :math:`g`, :math:`\partial u_{ic} = a_{ic} \hat f_i + b_{ic} u_{ic}` with
    :math:`a = g \rho`, :math:`b = -g S \rho^2`; :math:`u` depends on :math:`D^{(1)}_{ic}`
    with sign -1 and on :math:`r_i = D^{(1)}_{i y_i}` with +1, so
    :math:`\partial D^{(1)}_{ic} = -\partial u_{ic}` plus, at :math:`c = y_i`, the row sum
    :math:`\sum_c \partial u_{ic}`. :math:`\partial \hat f_i = \sum_c a_{ic} u_{ic}`, then
    through the normalisation of :math:`f`.
    """

    @staticmethod
    def forward(ctx, f, positive, negative, labels):  # type: ignore[override]
        n, c, d = positive.shape
        f_norm = torch.linalg.vector_norm(f, dim=1)
        f_inv = torch.where(f_norm > NORM_EPS, 1 / f_norm.clamp_min(NORM_EPS), 0.0)
        unit = f * f_inv[:, None]
        numer = f.new_empty(n, c)
        inv_norm = f.new_empty(n, c)
        for rows in _chunks(n, c, d):
            u = _differences(positive, negative, labels, rows)
            numer[rows] = torch.bmm(u, unit[rows, :, None]).squeeze(2)
            norm = torch.linalg.vector_norm(u, dim=2)
            inv_norm[rows] = torch.where(norm > NORM_EPS, 1 / norm.clamp_min(NORM_EPS), 0.0)
        cosines = numer * inv_norm
        ctx.save_for_backward(unit, f_inv, positive, negative, labels, cosines, inv_norm)
        return cosines

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        unit, f_inv, positive, negative, labels, cosines, inv_norm = ctx.saved_tensors
        n, c, d = positive.shape
        a = grad * inv_norm
        b = -grad * cosines * inv_norm * inv_norm
        need_f, need_pos, need_neg = ctx.needs_input_grad[:3]
        d_unit = torch.zeros_like(unit) if need_f else None
        d_d1 = torch.empty_like(positive) if need_pos or need_neg else None
        for rows in _chunks(n, c, d):
            u = _differences(positive, negative, labels, rows)
            if d_unit is not None:
                d_unit[rows] = torch.bmm(a[rows, None, :], u).squeeze(1)
            if d_d1 is not None:
                d_u = u.mul_(b[rows, :, None]).addcmul_(a[rows, :, None], unit[rows, None, :])
                block = d_d1[rows]
                torch.neg(d_u, out=block)
                own = torch.arange(block.shape[0], device=block.device)
                block[own, labels[rows]] += d_u.sum(dim=1)
        d_f = None
        if d_unit is not None:
            # through unit = f / |f|: (d_unit - (d_unit . unit) unit) / |f|
            radial = (d_unit * unit).sum(dim=1, keepdim=True)
            d_f = (d_unit - radial * unit) * f_inv[:, None]
        d_pos = d_d1 if need_pos else None
        d_neg = -d_d1 if need_neg and d_d1 is not None else None
        return d_f, d_pos, d_neg, None
