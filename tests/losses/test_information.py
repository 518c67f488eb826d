"""Eq. 6, the information weight, against a literal implementation."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import prob_rows

from fdbpl.losses import information_weight
from fdbpl.sparsify import entropy, sparsify


def literal_weight(row: list[float], eps: float = 0.0) -> float:
    """w = 1 - H / log C with H = -sum p log(p + eps), 0 log 0 = 0, written per element."""
    c = len(row)
    h = -sum(p * math.log(p + eps) for p in row if p > 0 or eps > 0)
    return 1.0 if c == 1 else 1 - h / math.log(c)


@given(prob_rows(), st.sampled_from([0.0, 1e-8]))
def test_equals_literal_eq6(probs, eps):
    got = information_weight(probs, eps=eps)
    want = torch.tensor(
        [min(1.0, max(0.0, literal_weight(r, eps))) for r in probs.tolist()], dtype=torch.float64
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@given(prob_rows())
def test_in_unit_interval(probs):
    w = information_weight(probs)
    assert bool(((w >= 0) & (w <= 1)).all())


@given(prob_rows(min_c=2), st.data())
def test_invariant_to_permuting_classes(probs, data):
    perm = torch.tensor(data.draw(st.permutations(range(probs.shape[1]))))
    torch.testing.assert_close(
        information_weight(probs[:, perm]), information_weight(probs), rtol=0, atol=1e-12
    )


def test_uniform_is_zero_and_one_hot_is_one():
    for c in (2, 7, 1000):
        assert abs(float(information_weight(torch.full((1, c), 1 / c, dtype=torch.float64)))) < 1e-15
        assert float(information_weight(torch.eye(c, dtype=torch.float64)[:1])) == 1.0
    assert float(information_weight(torch.ones(1, 1))) == 1.0


@given(prob_rows(), st.data())
def test_sparse_input_is_the_weight_of_the_sparsified_distribution(probs, data):
    k = data.draw(st.integers(1, probs.shape[1]))
    labels = sparsify(probs, k, data.draw(st.sampled_from(["ms", "mr"])))
    torch.testing.assert_close(
        information_weight(labels), information_weight(labels.to_dense()), rtol=0, atol=1e-12
    )
    torch.testing.assert_close(entropy(labels), entropy(labels.to_dense()), rtol=0, atol=1e-12)


@given(prob_rows(min_c=2, max_c=30, allow_ties=False), st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_close_to_float32(probs, dtype):
    half = probs.to(dtype)
    half = half / half.float().sum(dim=1, keepdim=True).to(dtype)
    w = information_weight(half)
    assert w.dtype == torch.float32 and bool(torch.isfinite(w).all())
    want = torch.tensor([min(1.0, max(0.0, literal_weight(r))) for r in half.double().tolist()])
    torch.testing.assert_close(w, want.float(), rtol=0, atol=1e-5)
