"""Reductions of per-sample loss terms, shared by every loss."""

from __future__ import annotations

from typing import Literal

import torch

from fdbpl.errors import InputValueError

__all__ = ["REDUCTIONS", "Reduction", "check_reduction", "reduce"]

Reduction = Literal["mean", "sum", "none"]

#: The reductions every loss takes.
REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Refuse anything but ``"mean"``, ``"sum"`` or ``"none"``."""
    if reduction not in REDUCTIONS:
        raise InputValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """``"none"``: the ``(N,)`` terms; ``"sum"``: their sum; ``"mean"``: their mean (0 if N = 0)."""
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / max(per_sample.shape[0], 1)
