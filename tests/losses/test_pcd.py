"""Eq. 11-16 against literal double loops; the fused second-order form's numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from references import naive_broadcast_second
from strategies import pcd_batches

from fdbpl.errors import FDBPLError
from fdbpl.losses import FirstOrderDifferenceLoss, PCDLoss, SecondOrderDifferenceLoss
from fdbpl.losses.functional import (
    NORM_EPS,
    first_order_difference_loss,
    pcd,
    pcd_loss,
    second_order_difference_loss,
)


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def literal_first(f, pos, neg, labels, w, alpha):
    """Eq. 11-13 sample by sample: -1/N sum_i [(1 - w_i) S_i + alpha w_i (1 - S_i)]."""
    n = f.shape[0]
    d1 = [pos[c] - neg[c] for c in range(pos.shape[0])]
    total = f.new_zeros(())
    for i in range(n):
        s = cos(f[i], d1[int(labels[i])])
        total = total + (1 - w[i]) * s + alpha * w[i] * (1 - s)
    return -total / n


def literal_second(f, pos, neg, labels, w, delta):
    """Eq. 14-16 as the double loop over i, j with the (D,) vector D1[y_i] - D1[y_j] built each time."""
    n = f.shape[0]
    d1 = [pos[c] - neg[c] for c in range(pos.shape[0])]
    total = f.new_zeros(())
    for i in range(n):
        for j in range(n):
            if int(labels[i]) == int(labels[j]):
                continue
            d2 = d1[int(labels[i])] - d1[int(labels[j])]
            total = total + w[i] * w[j] * torch.clamp(cos(f[i], d2) + delta, min=0)
    return total / (n * (n - 1)) if n > 1 else total


def grads(value, tensors):
    return torch.autograd.grad(value, tensors, allow_unused=True)


def requires_grad(batch):
    f, pos, neg, labels, w = batch
    return f.clone().requires_grad_(), pos.clone().requires_grad_(), neg.clone().requires_grad_(), labels, w


@given(pcd_batches(), st.floats(0.0, 2.0))
def test_first_order_equals_literal_eq13(batch, alpha):
    f, pos, neg, labels, w = requires_grad(batch)
    got = first_order_difference_loss(f, pos, neg, labels, w, alpha=alpha)
    want = literal_first(f, pos, neg, labels, w, alpha)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for a, b in zip(grads(got, (f, pos, neg)), grads(want, (f, pos, neg))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


PATHS = ("items", "classes")


def force_path(patch: pytest.MonkeyPatch, path: str) -> None:
    """Make the fused loss sum over item pairs or over classes, whatever the shapes."""
    patch.setattr(pcd, "second_order_path", lambda n, c: path)


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("path", PATHS)
@given(pcd_batches(max_n=12, max_c=9), st.sampled_from([0.0, 0.1, 0.5, -0.2]))
def test_second_order_fused_equals_literal_double_loop(path, direct, batch, delta):
    """Both paths of the fused form (over item pairs or over classes), with distances by the
    Gram expansion or built directly, against the literal double loop, values and gradients."""
    f, pos, neg, labels, w = requires_grad(batch)
    w = w.clone().requires_grad_()
    with pytest.MonkeyPatch.context() as patch:
        force_path(patch, path)
        patch.setattr(pcd, "distances_built_directly", lambda dtype, wide: direct)
        got = second_order_difference_loss(f, pos, neg, labels, w, delta=delta)
    want = literal_second(f, pos, neg, labels, w, delta)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    if not want.requires_grad:  # no pair with different labels: the loss is a constant 0
        assert float(got.detach()) == 0.0
        return
    for a, b in zip(grads(got, (f, pos, neg, w)), grads(want, (f, pos, neg, w))):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@given(pcd_batches())
def test_reductions(batch):
    f, pos, neg, labels, w = batch
    n = f.shape[0]
    for fn in (first_order_difference_loss, second_order_difference_loss):
        none = fn(f, pos, neg, labels, w, reduction="none")
        assert none.shape == (n,)
        torch.testing.assert_close(fn(f, pos, neg, labels, w, reduction="mean"), none.mean())
    torch.testing.assert_close(
        first_order_difference_loss(f, pos, neg, labels, w, reduction="sum"),
        first_order_difference_loss(f, pos, neg, labels, w, reduction="none").sum(),
    )
    # "sum" is the double sum without Eq. 16's 1 / (N (N - 1))
    torch.testing.assert_close(
        second_order_difference_loss(f, pos, neg, labels, w, reduction="sum"),
        second_order_difference_loss(f, pos, neg, labels, w, reduction="mean") * max(n * (n - 1), 1),
    )


@given(pcd_batches(), st.data())
def test_invariant_to_permuting_the_batch_and_relabelling_classes(batch, data):
    f, pos, neg, labels, w = batch
    n, c = f.shape[0], pos.shape[0]
    rows = torch.tensor(data.draw(st.permutations(range(n))))
    perm = torch.tensor(data.draw(st.permutations(range(c))))  # new id of old class k is perm[k]
    inv = torch.argsort(perm)
    for fn in (first_order_difference_loss, second_order_difference_loss):
        base = fn(f, pos, neg, labels, w, reduction="none")
        moved = fn(f[rows], pos[inv], neg[inv], perm[labels][rows], w[rows], reduction="none")
        torch.testing.assert_close(moved, base[rows], rtol=0, atol=1e-12)


@given(pcd_batches())
def test_one_class_batch_is_exactly_zero(batch):
    f, pos, neg, labels, w = batch
    labels = torch.zeros_like(labels)
    f.requires_grad_()
    loss = second_order_difference_loss(f, pos, neg, labels, w)
    assert float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, f)
    assert bool((g == 0).all())


def test_single_sample_is_finite():
    f, pos, neg = torch.randn(1, 4), torch.randn(3, 4), torch.randn(3, 4)
    for fn in (first_order_difference_loss, second_order_difference_loss):
        loss = fn(f, pos, neg, torch.tensor([2]), torch.tensor([0.5]))
        assert bool(torch.isfinite(loss))
    assert float(second_order_difference_loss(f, pos, neg, torch.tensor([2]), torch.tensor([0.5]))) == 0.0


@pytest.mark.parametrize("delta", [0.1, -0.1])
def test_zero_norm_difference_stays_finite(delta):
    """Two classes with identical difference vectors: the guarded cosine is 0."""
    torch.manual_seed(3)
    neg = torch.randn(3, 5, dtype=torch.float64)
    pos = neg + torch.randn(1, 5, dtype=torch.float64)  # D1 identical for every class
    f = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    pos.requires_grad_()
    labels, w = torch.tensor([0, 1, 2, 0]), torch.ones(4, dtype=torch.float64)
    loss = second_order_difference_loss(f, pos, neg, labels, w, delta=delta)
    pairs = sum(int(a != b) for a in labels for b in labels)
    torch.testing.assert_close(loss, torch.tensor(max(delta, 0.0) * pairs / 12, dtype=torch.float64))
    for g in torch.autograd.grad(loss, (f, pos)):
        assert bool(torch.isfinite(g).all())
    zero_f = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    for fn in (first_order_difference_loss, second_order_difference_loss):
        out = fn(zero_f, pos, neg, labels, w)
        (g,) = torch.autograd.grad(out, zero_f)
        assert bool(torch.isfinite(out)) and bool(torch.isfinite(g).all())


def shared_component_batch(n=64, c=20, d=64, common=30.0, seed=0):
    """Prompts that differ by one word: difference vectors = big shared part + small per-class part."""
    rng = np.random.default_rng(seed)
    neg = rng.normal(size=(c, d))
    pos = neg + common * rng.normal(size=(1, d)) + 0.05 * rng.normal(size=(c, d))
    f = rng.normal(size=(n, d))
    labels = rng.integers(0, c, size=n)
    w = rng.uniform(size=n)
    return tuple(torch.from_numpy(x) for x in (f, pos, neg, labels, w))


@pytest.mark.parametrize("seed", range(4))
def test_fused_float32_is_as_accurate_as_naive_float32_with_a_shared_component(seed):
    f, pos, neg, labels, w = shared_component_batch(seed=seed)

    def value_and_grads(fn, dtype):
        args = [t.to(dtype).requires_grad_() for t in (f, pos, neg)]
        out = fn(*args, labels, w.to(dtype), 0.1)
        return [out.detach().double()] + [g.double() for g in torch.autograd.grad(out, args)]

    def fused(*a):
        return second_order_difference_loss(*a[:5], delta=a[5])

    ref = value_and_grads(naive_broadcast_second, torch.float64)
    torch.testing.assert_close(value_and_grads(fused, torch.float64)[0], ref[0], rtol=0, atol=1e-12)
    naive32 = value_and_grads(naive_broadcast_second, torch.float32)
    fused32 = value_and_grads(fused, torch.float32)
    for got, naive, want in zip(fused32, naive32, ref):
        err_fused = float((got - want).abs().max())
        err_naive = float((naive - want).abs().max())
        scale = float(want.abs().max())
        assert err_fused <= max(4 * err_naive, 1e-6 * scale), (err_fused, err_naive, scale)


def near_tie_batch(seed, gap, near, far, clusters=1, n=48, d=64, common=30.0):
    """``clusters`` groups of ``near`` classes whose difference vectors differ by ``gap``
    (relative), and ``far`` classes of their own; a shared component (two prompts that
    differ by one word) on top of all, as in practice."""
    rng = np.random.default_rng(seed)
    centres = [np.repeat(rng.normal(size=(1, d)), near, axis=0) for _ in range(clusters)]
    centres = np.concatenate([*centres, rng.normal(size=(far, d))])
    c = len(centres)
    d1 = centres * (1 + gap * rng.normal(size=(c, 1))) + gap * rng.normal(size=(c, d))
    neg = rng.normal(size=(c, d))
    pos = neg + d1 + common * rng.normal(size=(1, d))
    f = rng.normal(size=(n, d))
    labels = rng.integers(0, c, size=n)
    w = rng.uniform(size=n)
    return tuple(torch.from_numpy(x) for x in (f, pos, neg, labels, w))


def float32_errors(batch, fn):
    """Max |float32 - float64| of the value and of each gradient (f, pos, neg, w)."""
    f, pos, neg, labels, w = batch

    def value_and_grads(dtype):
        args = [t.to(dtype).requires_grad_() for t in (f, pos, neg, w)]
        out = fn(*args[:3], labels, args[3], 0.1)
        return [out.detach().double()] + [g.double() for g in torch.autograd.grad(out, args)]

    return [
        (float((a - b).abs().max()), float(b.abs().max()))
        for a, b in zip(value_and_grads(torch.float32), value_and_grads(torch.float64))
    ]


def fused_second(f, pos, neg, labels, w, delta):
    return second_order_difference_loss(f, pos, neg, labels, w, delta=delta)


def as_accurate_as_the_plain_formula(batch, factor: float) -> bool:
    eps = torch.finfo(torch.float32).eps
    fused = float32_errors(batch, fused_second)
    plain = float32_errors(batch, naive_broadcast_second)
    return all(e_f <= factor * e_p + 4 * eps * scale for (e_f, scale), (e_p, _) in zip(fused, plain))


@pytest.mark.parametrize("path", PATHS)
@given(
    st.integers(0, 2**31 - 1),
    st.floats(1e-5, 1e-2),
    st.integers(2, 5),
    st.integers(1, 5),
    st.sampled_from([8, 48]),
)
def test_near_tie_pairs_are_as_accurate_as_the_plain_float32_formula(path, seed, gap, near, far, n):
    """Near-identical classes among others: within 2x of the plain float32 formula's error
    against float64, for the value and every gradient."""
    with pytest.MonkeyPatch.context() as patch:
        force_path(patch, path)
        assert as_accurate_as_the_plain_formula(near_tie_batch(seed, gap, near, far, n=n), factor=2)


@pytest.mark.parametrize("path", PATHS)
@given(st.integers(0, 2**31 - 1), st.floats(1e-5, 1e-2), st.integers(2, 4), st.integers(2, 4))
def test_several_clusters_of_near_ties_stay_accurate(path, seed, gap, near, clusters):
    with pytest.MonkeyPatch.context() as patch:
        force_path(patch, path)
        assert as_accurate_as_the_plain_formula(near_tie_batch(seed, gap, near, 2, clusters), factor=2)


@given(pcd_batches(max_n=40, max_c=6, max_d=8, common=10.0))
def test_the_class_path_is_chosen_for_batches_with_many_more_items_than_classes(batch):
    """Both paths compute the same loss; the shapes choose the cheaper one."""
    f, pos, neg, labels, w = batch
    got = second_order_difference_loss(f, pos, neg, labels, w, reduction="none")
    with pytest.MonkeyPatch.context() as patch:
        force_path(patch, "items")
        want = second_order_difference_loss(f, pos, neg, labels, w, reduction="none")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@given(st.integers(1, 4096), st.integers(1, 4096))
def test_the_path_is_the_one_that_multiplies_less(n, c):
    """Items: four N x D x N products; classes: two N x D x C and two C x D x C."""
    over_items, over_classes = 4 * n * n, 2 * n * c + 2 * c * c
    assert pcd.second_order_path(n, c) == ("classes" if over_classes < over_items else "items")


@pytest.mark.parametrize(
    ("n", "c", "path"), [(32, 100, "items"), (512, 100, "classes"), (512, 1000, "items")]
)
def test_the_benchmark_shapes_take_the_expected_path(n, c, path):
    assert pcd.second_order_path(n, c) == path


@pytest.mark.parametrize("path", PATHS)
def test_a_class_of_zero_total_weight_still_passes_weight_gradients(path):
    """A class present in the batch whose items all weigh 0 stays a column of the sums (it
    must not be skipped as an absent class): its items' weights get their gradient."""
    gen = torch.Generator().manual_seed(0)
    f, pos, neg = (torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    labels = torch.tensor([0, 1, 1, 2])
    w = torch.tensor([0.0, 1.0, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    with pytest.MonkeyPatch.context() as patch:
        force_path(patch, path)
        got = second_order_difference_loss(f, pos, neg, labels, w, delta=0.0)
    want = literal_second(f, pos, neg, labels, w, 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (g_got,), (g_want,) = grads(got, (w,)), grads(want, (w,))
    assert float(g_want[0].abs()) > 0  # the check can fail
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)


def test_the_near_tie_check_fails_with_the_gram_expansion_in_float32(monkeypatch):
    """The accuracy checks above can fail: with the products in float32 and the distances
    by the Gram expansion, near ties are far off."""
    batch = near_tie_batch(0, 1e-3, near=3, far=2)
    assert as_accurate_as_the_plain_formula(batch, factor=2)
    monkeypatch.setattr(pcd, "products_dtype", lambda dtype, device: dtype)
    monkeypatch.setattr(pcd, "distances_built_directly", lambda dtype, wide: False)
    assert not as_accurate_as_the_plain_formula(batch, factor=4)


def test_distances_are_built_directly_where_the_products_are_no_wider():
    assert pcd.distances_built_directly(torch.float64, torch.float64)
    assert pcd.distances_built_directly(torch.float32, torch.float32)
    assert not pcd.distances_built_directly(torch.float32, torch.float64)


def test_the_products_are_float64_on_cpu_and_cuda_only():
    for dtype in (torch.float32, torch.float64):
        assert pcd.products_dtype(dtype, torch.device("cpu")) == torch.float64
        assert pcd.products_dtype(dtype, torch.device("cuda", 0)) == torch.float64
        assert pcd.products_dtype(dtype, torch.device("mps")) == dtype
        assert pcd.products_dtype(dtype, torch.device("xpu")) == dtype


@given(pcd_batches(), st.floats(0.0, 2.0))
def test_zero_difference_vectors_pass_no_gradient_in_either_order(batch, alpha):
    """Identical positive and negative prompts (D1 = 0): cosine 0, finite value, zero gradient."""
    f, _, neg, labels, w = requires_grad(batch)
    pos = neg.detach().clone().requires_grad_()
    first = first_order_difference_loss(f, pos, neg, labels, w, alpha=alpha)
    torch.testing.assert_close(first, -(alpha * w).mean(), rtol=0, atol=1e-12)
    second = second_order_difference_loss(f, pos, neg, labels, w, delta=0.1)
    for loss in (first, second):
        if loss.requires_grad:
            for g in grads(loss, (f, pos, neg)):
                assert g is None or bool((g == 0).all())
    tiny = neg + NORM_EPS / 4 * torch.ones_like(neg) / neg.shape[1] ** 0.5
    (g,) = grads(first_order_difference_loss(f, tiny, neg, labels, w, alpha=alpha), (f,))
    assert g is None or bool((g == 0).all())


def test_gradcheck():
    torch.manual_seed(4)
    f = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels, w = torch.tensor([0, 1, 2, 1, 0]), torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda *a: first_order_difference_loss(*a, labels, w, alpha=0.7), (f, pos, neg)
    )
    assert torch.autograd.gradcheck(
        lambda *a: second_order_difference_loss(*a, labels, w, delta=0.3), (f, pos, neg)
    )


def test_modules_equal_functions():
    f, pos, neg, labels, w = shared_component_batch(n=9, c=4, d=8, common=1.0)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            FirstOrderDifferenceLoss(0.5, reduction)(f, pos, neg, labels, w),
            first_order_difference_loss(f, pos, neg, labels, w, 0.5, reduction),
        )
        torch.testing.assert_close(
            SecondOrderDifferenceLoss(0.2, reduction)(f, pos, neg, labels, w),
            second_order_difference_loss(f, pos, neg, labels, w, 0.2, reduction),
        )
        torch.testing.assert_close(
            PCDLoss(0.3, 0.7, 0.5, 0.2, reduction)(f, pos, neg, labels, w),
            0.3 * first_order_difference_loss(f, pos, neg, labels, w, 0.5, reduction)
            + 0.7 * second_order_difference_loss(f, pos, neg, labels, w, 0.2, reduction),
        )
        torch.testing.assert_close(
            PCDLoss(0.3, 0.7, 0.5, 0.2, reduction)(f, pos, neg, labels, w),
            pcd_loss(f, pos, neg, labels, w, 0.3, 0.7, 0.5, 0.2, reduction),
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_reduce_in_float32(dtype):
    f, pos, neg, labels, w = shared_component_batch(n=16, c=5, d=8, common=1.0)
    for fn in (first_order_difference_loss, second_order_difference_loss):
        got = fn(f.to(dtype), pos.to(dtype), neg.to(dtype), labels, w.to(dtype))
        assert got.dtype == torch.float32 and bool(torch.isfinite(got))
        want = fn(*(t.to(dtype).double() for t in (f, pos, neg)), labels, w.to(dtype).double())
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
def test_a_callers_autocast_does_not_lower_the_second_order_precision(per_image):
    """Under bfloat16 autocast the fused products would run in bfloat16 (about 1e-5 off
    here); the loss turns autocast off and gives its float32 value."""
    f, pos, neg, labels, w = (
        t.float() if t.is_floating_point() else t for t in shared_component_batch(n=48, c=20, d=64)
    )
    if per_image:
        pos, neg = pos.expand(48, -1, -1).clone(), neg.expand(48, -1, -1).clone()
    want = second_order_difference_loss(f, pos, neg, labels, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = second_order_difference_loss(f, pos, neg, labels, w)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


_F, _T = torch.randn(4, 8), torch.randn(3, 8)
_L, _W = torch.tensor([0, 1, 2, 0]), torch.rand(4)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((_F[:, :6], _T, _T, _L, _W), r"must share D, got \(4, 6\) and \(3, 8\)"),
        (
            (_F, _T, _T[:2], _L, _W),
            r"positive_text_features and negative_text_features must have the same shape .* got \(3, 8\) and \(2, 8\)",
        ),
        ((_F, _T, _T, _L[:3], _W), r"labels: expected size 4 in dimension 0 .* got shape \(3\)"),
        (
            (_F, _T, _T, torch.tensor([0, 1, 3, 0]), _W),
            r"labels: expected class ids in \[0, 3\), got min 0 and max 3",
        ),
        ((_F, _T, _T, _L.float(), _W), r"labels: expected an integer tensor"),
        ((_F, _T, _T, _L, _W[:2]), r"weight: expected size 4 in dimension 0"),
        ((_F, _T, _T, _L, _W - 1), r"weight: expected values in \[0, 1\]"),
        ((_F[0], _T, _T, _L, _W), r"image_features: expected 2 dimension\(s\) \(N, D\), got 1"),
    ],
)
@pytest.mark.parametrize("fn", [first_order_difference_loss, second_order_difference_loss])
def test_errors_name_the_argument_and_shapes(fn, args, match):
    with pytest.raises(FDBPLError, match=match):
        fn(*args)
    with pytest.raises(FDBPLError, match="reduction"):
        fn(_F, _T, _T, _L, _W, reduction="avg")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool])
def test_unsigned_and_bool_labels_are_refused(dtype):
    """torch reads uint8 and bool index tensors as masks: a wrong value when N == C."""
    f, pos, neg = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([1, 0, 1]).to(dtype)
    for fn in (first_order_difference_loss, second_order_difference_loss):
        with pytest.raises(
            FDBPLError, match=rf"labels: expected a signed integer tensor .* got dtype {dtype}"
        ):
            fn(f, pos, neg, labels, torch.ones(3))


@given(pcd_batches(), st.sampled_from([torch.int8, torch.int16, torch.int32]))
def test_every_signed_integer_label_dtype_gives_the_int64_result(batch, dtype):
    f, pos, neg, labels, w = batch
    for fn in (first_order_difference_loss, second_order_difference_loss):
        assert torch.equal(fn(f, pos, neg, labels.to(dtype), w), fn(f, pos, neg, labels, w))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["image_features", "positive_text_features", "negative_text_features"])
def test_nan_or_infinite_features_are_refused(bad, where):
    args = {
        n: torch.randn(3, 4) for n in ("image_features", "positive_text_features", "negative_text_features")
    }
    args[where][1, 2] = bad
    for fn in (first_order_difference_loss, second_order_difference_loss):
        with pytest.raises(FDBPLError, match=rf"{where}: expected finite values"):
            fn(**args, labels=torch.tensor([0, 1, 2]), weight=torch.ones(3))
