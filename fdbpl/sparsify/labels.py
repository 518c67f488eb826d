"""The sparse Top-K soft-label container."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fdbpl._checks import (
    SUM_TOLERANCE,
    check_count,
    check_floating,
    check_integer,
    check_ndim,
    check_tensor,
    shape_str,
    value_checks_enabled,
)
from fdbpl.errors import InputValueError, ShapeError

__all__ = ["SparseSoftLabels"]

_Index = int | slice | torch.Tensor | Sequence[int]


class SparseSoftLabels:
    r"""N rows of Top-K teacher soft labels over C classes, stored without densifying.

    Row ``i`` is the distribution

    .. math::

        t_i(c) = \begin{cases} \text{values}[i, k] & c = \text{indices}[i, k] \\
                 \text{fill}[i] & \text{otherwise} \end{cases}

    so MR labels (Eq. 5) have ``fill = 0`` and MS labels (Eq. 4) have
    ``fill = (1 - sum(values)) / (C - K)``. The losses in :mod:`fdbpl.losses` consume
    this type directly and never build the dense ``(N, C)`` tensor.

    Args:
        indices: :math:`(N, K)` integer class ids (stored as int64), distinct within a row.
        values: :math:`(N, K)` floating probabilities of those classes.
        fill: :math:`(N,)` probability of *each* class outside the row's Top-K.
        num_classes: C, the number of classes.

    Raises:
        ShapeError: on a wrong number of dimensions, disagreeing N or K, ``K > C``, or
            integer ``values`` / floating ``indices``.
        InputValueError: ids out of ``[0, C)`` or repeated within a row, negative or
            non-finite probabilities, or rows whose total mass
            ``sum(values) + (C - K) * fill`` is not 1 (tolerance 1e-6 for float64, 1e-4
            for float32, 1e-2 for float16, 3e-2 for bfloat16; the looser of the two
            dtypes counts).

    ``values`` and ``fill`` are stored in the wider of their two dtypes (a table's
    float16 values beside its float32 fill become float32).

    Example:
        >>> import torch
        >>> from fdbpl.sparsify import SparseSoftLabels
        >>> labels = SparseSoftLabels(
        ...     indices=torch.tensor([[2, 0]]), values=torch.tensor([[0.6, 0.3]]),
        ...     fill=torch.tensor([0.05]), num_classes=4)
        >>> labels.to_dense()
        tensor([[0.3000, 0.0500, 0.6000, 0.0500]])
        >>> labels.top1
        tensor([2])
    """

    __slots__ = ("fill", "indices", "num_classes", "values")

    def __init__(
        self,
        indices: torch.Tensor,
        values: torch.Tensor,
        fill: torch.Tensor,
        num_classes: int,
        *,
        validate: bool = True,
    ) -> None:
        check_ndim("indices", indices, 2, "(N, K) of class ids")
        check_integer("indices", indices)
        check_ndim("values", values, 2, "(N, K) of probabilities")
        check_floating("values", values)
        check_tensor("fill", fill)
        if fill.ndim != 1:
            raise ShapeError(f"fill: expected 1 dimension (N,), got shape {shape_str(fill)}")
        check_floating("fill", fill)
        if indices.shape != values.shape:
            raise ShapeError(
                "indices and values must have the same shape (N, K), "
                f"got {shape_str(indices)} and {shape_str(values)}"
            )
        if fill.shape[0] != values.shape[0]:
            raise ShapeError(
                f"fill: expected shape ({values.shape[0]},) to match values {shape_str(values)}, "
                f"got {shape_str(fill)}"
            )
        num_classes = check_count("num_classes", num_classes)
        k = values.shape[1]
        if not 1 <= k <= num_classes:
            raise ShapeError(
                f"values: expected 1 <= K <= num_classes={num_classes}, got K={k} (shape {shape_str(values)})"
            )
        # Stored labels are often float16 values beside a float32 fill: keep the wider
        # dtype for both, and judge the row sums by the tolerance of the narrower one.
        tol = max(SUM_TOLERANCE.get(values.dtype, 1e-4), SUM_TOLERANCE.get(fill.dtype, 1e-4))
        dtype = torch.promote_types(values.dtype, fill.dtype)
        self.indices = indices.long()
        self.values = values.to(dtype)
        self.fill = fill.to(dtype)
        self.num_classes = num_classes
        if validate and value_checks_enabled():
            self._check_values(tol, torch.finfo(values.dtype).eps)

    def _check_values(self, tol: float, value_eps: float) -> None:
        n, k = self.values.shape
        if n == 0:
            return
        lo, hi = int(self.indices.min()), int(self.indices.max())
        if lo < 0 or hi >= self.num_classes:
            raise InputValueError(
                f"indices: expected class ids in [0, {self.num_classes}), got min {lo} and max {hi}"
            )
        if k > 1:
            ordered = self.indices.sort(dim=1).values
            repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
            if bool(repeated.any()):
                row = int(repeated.nonzero()[0, 0])
                raise InputValueError(
                    f"indices: expected distinct class ids within a row, row {row} repeats one: "
                    f"{self.indices[row].tolist()}"
                )
        for name, t in (("values", self.values), ("fill", self.fill)):
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                raise InputValueError(f"{name}: expected finite, non-negative probabilities")
        if k < self.num_classes:
            # A class outside the Top-K cannot hold more than a stored one, up to the rounding
            # of the stored values and of fill = (1 - sum(values)) / (C - K).
            lowest = self.values.min(dim=1).values
            slack = 4 * value_eps * (lowest + k / (self.num_classes - k))
            over = self.fill > lowest + slack
            if bool(over.any()):
                row = int(over.nonzero()[0, 0])
                raise InputValueError(
                    f"fill: row {row} gives each class outside its Top-{k} {float(self.fill[row]):.6g}, more "
                    f"than its smallest stored value {float(lowest[row]):.6g}: not Top-K labels"
                )
        mass = self.values.sum(dim=1, dtype=torch.float64) + (self.num_classes - k) * self.fill.double()
        err = (mass - 1).abs()
        if float(err.max()) > tol:
            row = int(err.argmax())
            raise InputValueError(
                f"values and fill: expected each row's mass sum(values) + (C - K) * fill to be 1 "
                f"(tolerance {tol:g}), row {row} has {float(mass[row]):.6g}"
            )

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any], num_classes: int) -> SparseSoftLabels:
        """Build labels from a collated batch with keys ``indices``, ``values`` and ``fill``.

        This is what :class:`torch.utils.data.DataLoader` makes of the dicts that the
        RIL-table dataset yields. Stored ids (uint16 / int32) are widened to int64.

        Args:
            batch: a mapping holding ``indices`` :math:`(N, K)`, ``values`` :math:`(N, K)`
                and ``fill`` :math:`(N,)`; other keys are ignored.
            num_classes: C.
        """
        missing = [key for key in ("indices", "values", "fill") if key not in batch]
        if missing:
            raise InputValueError(
                f"batch: expected keys 'indices', 'values' and 'fill', missing {missing} "
                f"(got keys {sorted(batch)})"
            )
        indices = check_tensor("batch['indices']", batch["indices"])
        return cls(indices.long(), batch["values"], batch["fill"], num_classes)

    @classmethod
    def cat(cls, parts: Sequence[SparseSoftLabels]) -> SparseSoftLabels:
        """Concatenate label sets with the same C and K along the rows."""
        if not parts:
            raise InputValueError("parts: expected at least one SparseSoftLabels, got none")
        first = parts[0]
        for i, p in enumerate(parts[1:], start=1):
            if p.num_classes != first.num_classes or p.topk != first.topk:
                raise ShapeError(
                    f"parts[{i}]: expected C={first.num_classes} and K={first.topk} as parts[0], "
                    f"got C={p.num_classes} and K={p.topk}"
                )
        return cls(
            torch.cat([p.indices for p in parts]),
            torch.cat([p.values for p in parts]),
            torch.cat([p.fill for p in parts]),
            first.num_classes,
            validate=False,
        )

    # -- views --------------------------------------------------------------------------

    @property
    def topk(self) -> int:
        """K, the number of stored classes per row."""
        return self.values.shape[1]

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of ``values`` and ``fill``."""
        return self.values.dtype

    @property
    def top1(self) -> torch.Tensor:
        """:math:`(N,)` int64: the teacher's pseudo hard label, the arg-max class of each row.

        Ties between stored values go to the earlier stored entry. For valid MS labels the
        fill never exceeds the smallest stored value, so the arg-max is always stored.
        """
        best = self.values.argmax(dim=1, keepdim=True)
        return self.indices.gather(1, best).squeeze(1)

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, index: _Index) -> SparseSoftLabels:
        """Rows as labels; an integer gives a one-row :class:`SparseSoftLabels`."""
        if isinstance(index, int) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} is out of range for SparseSoftLabels with N={n} rows")
            index = index % n
            index = slice(index, index + 1)
        return SparseSoftLabels(
            self.indices[index], self.values[index], self.fill[index], self.num_classes, validate=False
        )

    def to(self, *args: Any, **kwargs: Any) -> SparseSoftLabels:
        """Move to a device and/or cast ``values`` and ``fill``; ``indices`` stay int64.

        Takes the arguments of :meth:`torch.Tensor.to`.
        """
        values = self.values.to(*args, **kwargs)
        if not values.is_floating_point():
            raise ShapeError(f"to(): values must stay floating point, got dtype {values.dtype}")
        return SparseSoftLabels(
            self.indices.to(values.device),
            values,
            self.fill.to(values.device, values.dtype),
            self.num_classes,
            validate=False,
        )

    def restrict(self, classes: torch.Tensor) -> SparseSoftLabels:
        r"""The labels over a subset of the classes, renormalised: the teacher's distribution
        conditioned on the subset (class-agnostic training over per-batch class subsets).

        ``classes`` (S,) are distinct class ids that include every row's Top-K; class
        ``classes[j]`` becomes class j. Top-K entries keep their class and value; every
        other class of the subset keeps the row's fill; each row is then divided by its
        mass on the subset, :math:`Z_i = \sum \text{values}_i + (S - K)\,\text{fill}_i`.
        So MR labels (fill 0) are unchanged, and MS labels keep their per-class fill but
        lose the fill mass of the :math:`C - S` classes left out, which the division
        spreads over the subset in proportion.

        Raises:
            InputValueError: ``classes`` that repeat, leave out a Top-K class, or are
                outside ``[0, num_classes)``.
        """
        classes = classes.to(self.indices.device).long().flatten()
        s = classes.numel()
        position = torch.full((self.num_classes,), -1, dtype=torch.long, device=classes.device)
        if s and (int(classes.min()) < 0 or int(classes.max()) >= self.num_classes):
            raise InputValueError(f"classes: expected ids in [0, {self.num_classes})")
        position[classes] = torch.arange(s, device=classes.device)
        if int((position >= 0).sum()) != s:
            raise InputValueError("classes: expected distinct class ids")
        indices = position[self.indices]
        if bool((indices < 0).any()):
            raise InputValueError("classes: the subset must include every row's Top-K classes")
        z = self.values.sum(dim=1) + (s - self.topk) * self.fill
        return SparseSoftLabels(indices, self.values / z[:, None], self.fill / z, s, validate=False)

    def to_dense(self) -> torch.Tensor:
        """The labels as a dense :math:`(N, C)` probability tensor (dtype of ``values``)."""
        dense = self.fill[:, None].expand(len(self), self.num_classes).clone()
        return dense.scatter_(1, self.indices, self.values)

    def __repr__(self) -> str:
        return (
            f"SparseSoftLabels(N={len(self)}, K={self.topk}, num_classes={self.num_classes}, "
            f"dtype={self.dtype}, device={self.device})"
        )
