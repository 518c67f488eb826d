from __future__ import annotations

import torch


def reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """``"none"``: the ``(N,)`` terms; ``"sum"``: their sum; ``"mean"``: their mean (0 if N = 0)."""
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total if reduction == "sum" else total / max(per_sample.shape[0], 1)
