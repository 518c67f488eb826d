"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st


@st.composite
def prob_rows(draw, min_n=1, max_n=6, min_c=1, max_c=12, allow_ties=True):
    """(N, C) float64 probability rows; sometimes one-hot, uniform or with ties on purpose."""
    n = draw(st.integers(min_n, max_n))
    c = draw(st.integers(min_c, max_c))
    kind = draw(st.sampled_from(["random", "peaked", "ties", "onehot", "uniform"]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if kind == "random" or (kind == "ties" and not allow_ties):
        logits = rng.normal(size=(n, c)) * draw(st.floats(0.1, 5.0))
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
    elif kind == "peaked":
        p = rng.exponential(size=(n, c)) ** 6
    elif kind == "ties":
        p = rng.integers(1, 4, size=(n, c)).astype(np.float64)
    elif kind == "onehot":
        p = np.zeros((n, c))
        p[np.arange(n), rng.integers(0, c, size=n)] = 1.0
    else:
        p = np.ones((n, c))
    p = p / p.sum(axis=1, keepdims=True)
    return torch.from_numpy(p)


@st.composite
def pcd_batches(draw, max_n=7, max_c=5, max_d=6, common=0.0):
    """(f, pos, neg, labels, weight) in float64 for the PCD losses.

    Labels are drawn with repeats on purpose (ties, one-class batches); ``common`` adds a
    shared component to every difference vector, as two prompts that differ by one word do.
    """
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    d = draw(st.integers(2, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    f = torch.from_numpy(rng.normal(size=(n, d)))
    neg = torch.from_numpy(rng.normal(size=(c, d)))
    pos = neg + torch.from_numpy(rng.normal(size=(c, d))) + common * torch.from_numpy(rng.normal(size=(1, d)))
    labels = torch.from_numpy(rng.integers(0, draw(st.integers(1, c)), size=n))
    weight = torch.from_numpy(rng.uniform(size=n))
    if draw(st.booleans()):
        weight = torch.from_numpy(rng.integers(0, 2, size=n).astype(np.float64))  # w exactly 0 or 1
    return f, pos, neg, labels, weight
