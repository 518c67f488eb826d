"""Validation shared by the public entry points.

Shape and dtype checks are free (they read metadata only). Value checks (ranges, NaN,
row sums) read tensor values and therefore synchronise with the device; they run in
eager mode and are skipped while ``torch.compile`` traces, so compiled graphs have no
host synchronisation. :func:`fdbpl.set_value_checks` turns them off for a hot loop.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from fdbpl.errors import InputValueError, ShapeError

_VALUE_CHECKS = True

#: Absolute tolerance on ``|sum(row) - 1|`` for probability rows, by dtype.
SUM_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-6,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 3e-2,
}


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks of fdbpl's public functions on or off.

    Shape checks always run. Value checks (labels in range, weights in ``[0, 1]``,
    finite probabilities whose rows sum to 1) read tensor values, which costs a host
    synchronisation on an accelerator. They are on by default and are skipped
    automatically inside ``torch.compile``.

    Args:
        enabled: ``True`` to check values, ``False`` to trust the inputs.
    """
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def value_checks_enabled() -> bool:
    """Whether value checks run now (on, and not inside a ``torch.compile`` trace)."""
    return _VALUE_CHECKS and not torch.compiler.is_compiling()


def shape_str(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def check_tensor(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ShapeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    check_tensor(name, t)
    if t.ndim != ndim:
        raise ShapeError(
            f"{name}: expected {ndim} dimension(s) {layout}, got {t.ndim} with shape {shape_str(t)}"
        )


def check_floating(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise ShapeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def check_integer(name: str, t: torch.Tensor) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ShapeError(f"{name}: expected an integer tensor, got dtype {t.dtype}")


def check_size(name: str, t: torch.Tensor, dim: int, size: int, what: str) -> None:
    if t.shape[dim] != size:
        raise ShapeError(
            f"{name}: expected size {size} in dimension {dim} ({what}), got shape {shape_str(t)}"
        )


def check_finite(name: str, t: torch.Tensor) -> None:
    check_all_finite((name, t))


def check_all_finite(*named: tuple[str, torch.Tensor]) -> None:
    """Refuse NaN or infinity in any of the tensors, with one host synchronisation."""
    if not value_checks_enabled() or not named:
        return
    ok = torch.stack([torch.isfinite(t).all() for _, t in named])
    if not bool(ok.all()):
        name = named[int((~ok).nonzero()[0, 0])][0]
        raise InputValueError(f"{name}: expected finite values, got NaN or infinity")


def check_probabilities(name: str, probs: torch.Tensor) -> None:
    """Check a ``(N, C)`` tensor of probability rows: floating, finite, >= 0, rows sum to 1."""
    check_ndim(name, probs, 2, "(N, C) of class probabilities")
    check_floating(name, probs)
    if probs.shape[1] < 1:
        raise ShapeError(f"{name}: expected at least one class, got shape {shape_str(probs)}")
    if not value_checks_enabled():
        return
    probs = probs.detach()
    check_finite(name, probs)
    if bool((probs < 0).any()):
        raise InputValueError(f"{name}: expected non-negative probabilities, got a negative value")
    tol = SUM_TOLERANCE.get(probs.dtype, 1e-4)
    sums = probs.sum(dim=1, dtype=torch.float64)
    worst = (sums - 1).abs().max() if sums.numel() else sums.new_zeros(())
    if float(worst) > tol:
        row = int((sums - 1).abs().argmax())
        raise InputValueError(
            f"{name}: expected rows that sum to 1 (tolerance {tol:g} for {probs.dtype}), "
            f"row {row} sums to {float(sums[row]):.6g}"
        )


def check_weight(name: str, weight: torch.Tensor, n: int) -> None:
    """Check a ``(N,)`` information weight with values in ``[0, 1]``."""
    check_ndim(name, weight, 1, "(N,) of information weights")
    check_floating(name, weight)
    check_size(name, weight, 0, n, "N, the batch size")
    if value_checks_enabled():
        weight = weight.detach()
        # one synchronisation: NaN fails both comparisons, infinity the range
        if weight.numel() and not bool(((weight >= 0) & (weight <= 1)).all()):
            check_finite(name, weight)
            raise InputValueError(
                f"{name}: expected values in [0, 1], got min {float(weight.min()):.6g} "
                f"and max {float(weight.max()):.6g}"
            )


def check_labels(name: str, labels: torch.Tensor, n: int, num_classes: int) -> None:
    """Check ``(N,)`` signed-integer class ids in ``[0, num_classes)``.

    ``bool`` and unsigned tensors are refused: torch indexes with ``uint8`` and ``bool``
    tensors as masks, which gives a wrong value without an error when ``N == C``.
    """
    check_ndim(name, labels, 1, "(N,) of class ids")
    if labels.dtype == torch.bool or not (labels.dtype.is_signed or labels.is_floating_point()):
        raise ShapeError(
            f"{name}: expected a signed integer tensor of class ids (int64, int32, ...), got dtype "
            f"{labels.dtype} (torch indexes with uint8 and bool tensors as masks)"
        )
    check_integer(name, labels)
    check_size(name, labels, 0, n, "N, the batch size")
    if value_checks_enabled() and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise InputValueError(
                f"{name}: expected class ids in [0, {num_classes}), got min {lo} and max {hi}"
            )


def check_logits(name: str, logits: torch.Tensor) -> None:
    """Check ``(N, C)`` logits: floating; no NaN or ``+inf``; ``-inf`` (a masked class) is
    allowed where the row keeps at least one finite logit."""
    check_ndim(name, logits, 2, "(N, C) of logits")
    check_floating(name, logits)
    if logits.shape[1] < 1:
        raise ShapeError(f"{name}: expected at least one class, got shape {shape_str(logits)}")
    if not value_checks_enabled() or logits.numel() == 0:
        return
    logits = logits.detach()
    if bool(torch.isnan(logits).any()) or bool((logits == math.inf).any()):
        raise InputValueError(f"{name}: expected finite logits or -inf for masked classes, got NaN or +inf")
    dead = ~torch.isfinite(logits).any(dim=1)
    if bool(dead.any()):
        raise InputValueError(
            f"{name}: row {int(dead.nonzero()[0, 0])} has no finite logit (every class masked with -inf)"
        )


def first_difference(a: Sequence[object], b: Sequence[object]) -> int:
    """The first index where two sequences differ (the shorter length if one extends the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """An integer argument (not a bool, not a float) that is at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: object, minimum: float | None = None, positive: bool = False) -> float:
    """A finite real number (not a bool), optionally ``>= minimum`` or ``> 0``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value.detach())  # a 0-d tensor, e.g. a learned logit scale
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and positive:
        ok = value > 0
    if not ok:
        bound = " > 0" if positive else f" >= {minimum:g}" if minimum is not None else ""
        raise InputValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_weights(**weights: object) -> None:
    """Each named loss weight a finite real number (not a bool, ``None`` or a string); the error
    names the first that is not."""
    for name, value in weights.items():
        check_number(name, value)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype fdbpl computes in: the widest of the inputs' and float32 (so float32 for
    half inputs, float64 for float64 ones)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype
