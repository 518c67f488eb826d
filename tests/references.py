"""Reference implementations shared by the tests and the benchmarks.

Literal, slow forms of single equations live in the test file of the function they check;
this module holds the ones that a benchmark also needs as its baseline.
"""

from __future__ import annotations

import torch


def naive_broadcast_second(f, pos, neg, labels, w, delta):
    """The obvious vectorised form: builds the (N, N, D) tensor. Reference for precision."""
    d1 = (pos - neg)[labels]
    d2 = d1[:, None, :] - d1[None, :, :]
    s = (f[:, None, :] * d2).sum(-1) / (f.norm(dim=1)[:, None] * d2.norm(dim=-1).clamp_min(1e-8))
    mask = labels[:, None] != labels[None, :]
    terms = torch.where(mask, w[:, None] * w[None, :] * torch.relu(s + delta), 0.0)
    n = f.shape[0]
    return terms.sum() / max(n * (n - 1), 1)
