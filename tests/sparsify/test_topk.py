"""MS (Eq. 4) and MR (Eq. 5) against literal per-row implementations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import prob_rows

from fdbpl.errors import FDBPLError
from fdbpl.sparsify import SparseSoftLabels, sparsify, topk_mr, topk_ms


def literal_topk_ids(row: list[float], k: int) -> list[int]:
    """Class ids of the K largest probabilities, ties to the lower id, by plain sorting."""
    return sorted(range(len(row)), key=lambda c: (-row[c], c))[:k]


def literal_ms(row: list[float], k: int) -> list[float]:
    """Eq. 4 written out: keep Top-K, every other class gets (1 - sum_topK) / (C - K).

    A row whose Top-K mass exceeds 1 by round-off (allowed by the sum tolerance) gets a
    fill of 0, as topk_ms documents, not a negative probability.
    """
    keep = literal_topk_ids(row, k)
    c = len(row)
    rest = max(0.0, (1 - sum(row[i] for i in keep)) / (c - k)) if c > k else 0.0
    return [row[i] if i in keep else rest for i in range(c)]


def literal_mr(row: list[float], k: int) -> list[float]:
    """Eq. 5 written out: keep Top-K, zero the others, divide by the kept sum."""
    keep = literal_topk_ids(row, k)
    total = sum(row[i] for i in keep)
    return [row[i] / total if i in keep else 0.0 for i in range(len(row))]


@st.composite
def probs_and_k(draw):
    probs = draw(prob_rows())
    k = draw(st.integers(1, probs.shape[1]))
    return probs, k


@given(probs_and_k())
def test_ms_equals_literal_eq4(case):
    probs, k = case
    got = topk_ms(probs, k).to_dense()
    want = torch.tensor([literal_ms(row, k) for row in probs.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@given(probs_and_k())
def test_mr_equals_literal_eq5(case):
    probs, k = case
    got = topk_mr(probs, k).to_dense()
    want = torch.tensor([literal_mr(row, k) for row in probs.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@given(probs_and_k(), st.sampled_from(["ms", "mr"]))
def test_rows_sum_to_one(case, strategy):
    probs, k = case
    dense = sparsify(probs, k, strategy).to_dense()
    torch.testing.assert_close(dense.sum(dim=1), torch.ones(len(probs), dtype=dense.dtype))
    assert bool((dense >= 0).all())


@given(probs_and_k())
def test_mr_keeps_topk_order_ratios_and_at_most_k_nonzeros(case):
    probs, k = case
    labels = topk_mr(probs, k)
    dense = labels.to_dense()
    assert int((dense > 0).sum(dim=1).max()) <= k
    kept = probs.gather(1, labels.indices)
    # order: stored values descend, and so do the original probabilities they came from
    assert bool((labels.values[:, :-1] >= labels.values[:, 1:]).all())
    assert bool((kept[:, :-1] >= kept[:, 1:]).all())
    # ratios: each stored value is the original divided by the same row constant
    torch.testing.assert_close(labels.values * kept.sum(1, keepdim=True), kept, rtol=1e-12, atol=1e-15)


@given(probs_and_k())
def test_ms_keeps_topk_values_and_fill_is_below_them(case):
    probs, k = case
    labels = topk_ms(probs, k)
    torch.testing.assert_close(labels.values, probs.gather(1, labels.indices), rtol=0, atol=0)
    assert bool((labels.fill <= labels.values.min(dim=1).values + 1e-12).all())


@given(prob_rows(), st.sampled_from(["ms", "mr"]))
def test_k_equal_c_returns_the_input(probs, strategy):
    dense = sparsify(probs, probs.shape[1], strategy).to_dense()
    torch.testing.assert_close(dense, probs, rtol=0, atol=1e-15)


@given(probs_and_k(), st.sampled_from(["ms", "mr"]))
def test_dense_sparse_round_trip(case, strategy):
    probs, k = case
    labels = sparsify(probs, k, strategy)
    dense = labels.to_dense()
    again = sparsify(dense, k, strategy)
    torch.testing.assert_close(again.to_dense(), dense, rtol=0, atol=1e-12)
    rebuilt = SparseSoftLabels(labels.indices, labels.values, labels.fill, labels.num_classes)
    torch.testing.assert_close(rebuilt.to_dense(), dense, rtol=0, atol=0)


def test_ties_are_deterministic_and_go_to_the_lower_id():
    probs = torch.full((3, 6), 1 / 6)
    for strategy in ("ms", "mr"):
        labels = sparsify(probs, 2, strategy)
        assert labels.indices.tolist() == [[0, 1]] * 3
        assert labels.top1.tolist() == [0, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@given(probs=prob_rows(min_c=2, max_c=40, allow_ties=False), strategy=st.sampled_from(["ms", "mr"]))
def test_half_precision_is_finite_and_close_to_float32(dtype, probs, strategy):
    half = probs.to(dtype)
    half = half / half.float().sum(dim=1, keepdim=True).to(dtype)  # re-normalise after rounding
    k = max(1, probs.shape[1] // 3)
    got = sparsify(half, k, strategy)
    assert got.dtype == torch.float32
    assert bool(torch.isfinite(got.to_dense()).all())
    literal = literal_ms if strategy == "ms" else literal_mr
    ref = torch.tensor([literal(row, k) for row in half.double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(got.to_dense().double(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("probs", "k", "match"),
    [
        (torch.tensor([0.5, 0.5]), 1, r"probs: expected 2 dimension\(s\).*got 1 with shape \(2\)"),
        (torch.full((1, 2, 2), 0.5), 1, r"probs: expected 2 dimension\(s\).*got 3"),
        (torch.tensor([[1, 0]]), 1, "probs: expected a floating-point tensor, got dtype torch.int64"),
        (torch.tensor([[math.nan, 1.0]]), 1, "probs: expected finite values"),
        (torch.tensor([[math.inf, 1.0]]), 1, "probs: expected finite values"),
        (torch.tensor([[-0.5, 1.5]]), 1, "probs: expected non-negative"),
        (
            torch.tensor([[0.5, 0.6]]),
            1,
            r"probs: expected rows that sum to 1 \(tolerance 0.0001 .*row 0 sums to 1.1",
        ),
        (torch.tensor([[0.5, 0.5]]), 0, r"k: expected an integer with 1 <= k <= C=2, got 0"),
        (torch.tensor([[0.5, 0.5]]), 3, r"k: expected an integer with 1 <= k <= C=2, got 3"),
    ],
)
@pytest.mark.parametrize("fn", [topk_ms, topk_mr])
def test_bad_input_is_a_value_error_naming_the_argument(fn, probs, k, match):
    with pytest.raises(FDBPLError, match=match) as info:
        fn(probs, k)
    assert isinstance(info.value, ValueError)


def test_unknown_strategy():
    with pytest.raises(ValueError, match="strategy: expected 'mr' or 'ms', got 'xx'"):
        sparsify(torch.tensor([[1.0]]), 1, "xx")  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [2.0, 2.5, "2", True, None])
def test_non_integer_k_is_refused(k):
    with pytest.raises(FDBPLError, match=r"k: expected an integer"):
        topk_mr(torch.full((1, 4), 0.25), k)


@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf")])
def test_bad_entropy_eps_is_refused(eps):
    from fdbpl.sparsify import entropy

    with pytest.raises(FDBPLError, match=r"eps: expected a finite number >= 0"):
        entropy(torch.full((1, 4), 0.25), eps=eps)
