"""SparseSoftLabels: construction checks, views, indexing, concatenation, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import prob_rows

from fdbpl.cache.codec import class_id_dtype
from fdbpl.errors import InputValueError, ShapeError
from fdbpl.sparsify import SparseSoftLabels, sparsify


@st.composite
def labels(draw):
    probs = draw(prob_rows(min_n=1, max_n=8))
    k = draw(st.integers(1, probs.shape[1]))
    return probs, sparsify(probs, k, draw(st.sampled_from(["ms", "mr"])))


@given(labels())
def test_top1_is_the_argmax_of_the_dense_row(case):
    probs, lab = case
    dense = lab.to_dense()
    best = dense.max(dim=1).values
    # MS fills can tie with the stored values up to round-off
    torch.testing.assert_close(dense.gather(1, lab.top1[:, None]).squeeze(1), best, rtol=0, atol=1e-12)
    # the teacher's own arg-max survives sparsification (ties: the lower id in both)
    literal = [min(range(len(r)), key=lambda c: (-r[c], c)) for r in probs.tolist()]
    assert lab.top1.tolist() == literal


@given(labels(), st.data())
def test_indexing_and_cat_agree_with_dense(case, data):
    _, lab = case
    n = len(lab)
    i = data.draw(st.integers(-n, n - 1))
    torch.testing.assert_close(
        lab[i].to_dense(), lab.to_dense()[i : i + 1] if i >= 0 else lab.to_dense()[[i]]
    )
    rows = data.draw(st.lists(st.integers(0, n - 1), max_size=2 * n))
    picked = lab[torch.tensor(rows, dtype=torch.long)]
    torch.testing.assert_close(picked.to_dense(), lab.to_dense()[rows])
    cut = data.draw(st.integers(0, n))
    joined = SparseSoftLabels.cat([lab[:cut], lab[cut:]])
    torch.testing.assert_close(joined.to_dense(), lab.to_dense())


def test_to_moves_and_casts_values_only():
    lab = sparsify(torch.softmax(torch.randn(4, 7), dim=1), 3, "ms")
    half = lab.to(torch.float64)
    assert half.dtype == torch.float64 and half.indices.dtype == torch.int64
    with pytest.raises(ShapeError, match="floating point"):
        lab.to(torch.int32)


def test_from_batch_takes_stored_dtypes():
    ids = np.array([[3, 1], [0, 2]], dtype=class_id_dtype(5))
    batch = {
        "indices": torch.from_numpy(ids.astype(np.int32)),
        "values": torch.tensor([[0.5, 0.2], [0.7, 0.15]], dtype=torch.float16),
        "fill": torch.tensor([0.1, 0.05], dtype=torch.float32),
        "weight": torch.ones(2),
    }
    lab = SparseSoftLabels.from_batch(batch, num_classes=5)
    assert lab.indices.dtype == torch.int64 and lab.dtype == torch.float32
    torch.testing.assert_close(lab.to_dense().sum(1), torch.ones(2), atol=1e-3, rtol=0)
    with pytest.raises(InputValueError, match=r"missing \['fill'\]"):
        SparseSoftLabels.from_batch({"indices": batch["indices"], "values": batch["values"]}, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(indices=torch.tensor([0, 1])), ShapeError, r"indices: expected 2 dimension"),
        (dict(indices=torch.tensor([[0.0, 1.0]])), ShapeError, "indices: expected an integer tensor"),
        (
            dict(values=torch.tensor([[0.5, 0.5, 0.0]])),
            ShapeError,
            r"same shape \(N, K\), got \(1, 2\) and \(1, 3\)",
        ),
        (dict(fill=torch.zeros(2)), ShapeError, r"fill: expected shape \(1,\)"),
        (dict(num_classes=1), ShapeError, "K <= num_classes=1, got K=2"),
        (
            dict(indices=torch.tensor([[0, 4]])),
            InputValueError,
            r"class ids in \[0, 3\), got min 0 and max 4",
        ),
        (dict(indices=torch.tensor([[1, 1]])), InputValueError, "distinct class ids within a row, row 0"),
        (dict(values=torch.tensor([[0.9, 0.9]])), InputValueError, "row 0 has 1.8"),
        (dict(values=torch.tensor([[-0.1, 1.1]])), InputValueError, "non-negative"),
    ],
)
def test_construction_errors(kwargs, error, match):
    args = dict(
        indices=torch.tensor([[0, 1]]), values=torch.tensor([[0.5, 0.5]]), fill=torch.zeros(1), num_classes=3
    )
    args.update(kwargs)
    with pytest.raises(error, match=match):
        SparseSoftLabels(**args)


@given(st.integers(1, 2**31 - 1))
def test_class_id_dtype_holds_every_id(num_classes):
    dtype = class_id_dtype(num_classes)
    assert dtype.kind in "iu"
    assert np.iinfo(dtype).max >= num_classes - 1
    assert dtype == (np.uint16 if num_classes <= 65535 else np.int32)


def test_class_id_dtype_rejects_bad_counts():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputValueError, match="num_classes"):
            class_id_dtype(bad)


@given(labels(), st.integers(-20, 20))
def test_integer_indexing_is_a_row_or_an_index_error(case, index):
    _, lab = case
    n = len(lab)
    if -n <= index < n:
        row = lab[index]
        assert len(row) == 1 and torch.equal(row.indices, lab.indices[index][None])
    else:
        with pytest.raises(IndexError, match=rf"index {index} is out of range .* N={n} rows"):
            lab[index]


@pytest.mark.parametrize("num_classes", [4.0, 4.5, "4", True])
def test_non_integer_num_classes_is_refused(num_classes):
    with pytest.raises(InputValueError, match="num_classes: expected an integer"):
        SparseSoftLabels(torch.tensor([[0]]), torch.tensor([[1.0]]), torch.tensor([0.0]), num_classes)


@given(st.integers(3, 10), st.data())
def test_ms_fill_above_a_stored_value_is_refused(c, data):
    """Top-K labels cannot give an unstored class more than a stored one, whatever the mass."""
    k = data.draw(st.integers(2, c - 1))
    rest = c - k
    fill = data.draw(st.floats(0.05, 0.9)) / rest
    lowest = fill * data.draw(st.floats(0.05, 0.97))
    others = (1 - rest * fill - lowest) / (k - 1)
    values = torch.tensor([[others] * (k - 1) + [lowest]], dtype=torch.float64)
    indices = torch.arange(k)[None]
    if others < 0:
        with pytest.raises(InputValueError, match="non-negative"):
            SparseSoftLabels(indices, values, torch.tensor([fill], dtype=torch.float64), c)
        return
    with pytest.raises(InputValueError, match=rf"fill: row 0 gives each class outside its Top-{k}"):
        SparseSoftLabels(indices, values, torch.tensor([fill], dtype=torch.float64), c)


# -- restrict: the labels over a class subset (class-agnostic training) --------------------


@given(
    n=st.integers(1, 6),
    c=st.integers(3, 30),
    data=st.data(),
    strategy=st.sampled_from(["ms", "mr"]),
)
def test_restrict_is_the_dense_distribution_conditioned_on_the_subset(n, c, data, strategy):
    from fdbpl.sparsify import sparsify

    k = data.draw(st.integers(1, c - 1))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    probs = torch.softmax(torch.randn(n, c, dtype=torch.float64, generator=gen) * 3, dim=1)
    labels = sparsify(probs, k, strategy)
    needed = set(labels.indices.flatten().tolist())
    extra = (
        data.draw(st.lists(st.sampled_from(sorted(set(range(c)) - needed) or [0]), unique=True))
        if len(needed) < c
        else []
    )
    subset = sorted(needed | set(extra))
    order = data.draw(st.permutations(subset))
    classes = torch.tensor(order)
    got = labels.restrict(classes).to_dense()
    dense = labels.to_dense()[:, classes]
    want = dense / dense.sum(dim=1, keepdim=True)  # the literal conditional distribution
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    if strategy == "mr":
        torch.testing.assert_close(labels.restrict(classes).values, labels.values, rtol=0, atol=1e-15)


def test_restrict_refuses_subsets_without_the_top_k():
    labels = SparseSoftLabels(torch.tensor([[2, 0]]), torch.tensor([[0.6, 0.3]]), torch.tensor([0.05]), 4)
    with pytest.raises(InputValueError, match="must include every row's Top-K"):
        labels.restrict(torch.tensor([0, 1]))
    with pytest.raises(InputValueError, match="distinct"):
        labels.restrict(torch.tensor([0, 2, 2]))
    with pytest.raises(InputValueError, match=r"ids in \[0, 4\)"):
        labels.restrict(torch.tensor([0, 2, 7]))
