"""Every loss with text features per image (N, C, D), against literal per-image loops.

Per image i the paper's equations read with anchor i's own text features:
D1_i = g_i(V) - g_i(V-bar), S1_i = cos(f_i, D1_i[y_i]), S2_ij = cos(f_i, D1_i[y_i] - D1_i[y_j]),
and the logits of Eq. 7-8 compare f_i with g_i. The references below are written from those
sentences, one image and one class at a time, in float64.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.errors import FDBPLError
from fdbpl.losses import FDBPLLoss, FirstOrderDifferenceLoss, PCDLoss, SecondOrderDifferenceLoss
from fdbpl.losses.functional import (
    clip_logits,
    fdbpl_loss,
    first_order_difference_loss,
    negative_uniform_loss,
    pcd_loss,
    positive_distillation_loss,
    second_order_difference_loss,
)
from fdbpl.losses.functional import per_image as per_image_module


def cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def literal_logits(f, text, scale):
    n, c = text.shape[:2]
    return torch.stack([torch.stack([scale * cos(f[i], text[i, k]) for k in range(c)]) for i in range(n)])


def literal_positive(f, pos, teacher, w, scale):
    """Eq. 9 per image: w_i KL(t_i || softmax(logits_i)), mean over the batch."""
    logits = literal_logits(f, pos, scale)
    total = f.new_zeros(())
    for i in range(f.shape[0]):
        log_p = logits[i] - torch.logsumexp(logits[i], dim=0)
        kl = sum(t * (math.log(t) - log_p[k]) for k, t in enumerate(teacher[i].tolist()) if t > 0)
        total = total + w[i] * kl
    return total / f.shape[0]


def literal_negative(f, neg, w, scale):
    """Eq. 10 per image: (1 - w_i) KL(u || softmax(negative logits_i)), mean over the batch."""
    logits = literal_logits(f, neg, scale)
    n, c = logits.shape
    total = f.new_zeros(())
    for i in range(n):
        log_p = logits[i] - torch.logsumexp(logits[i], dim=0)
        total = total + (1 - w[i]) * sum((1 / c) * (math.log(1 / c) - log_p[k]) for k in range(c))
    return total / n


def literal_first(f, pos, neg, labels, w, alpha):
    """Eq. 11-13 per image: S1_i = cos(f_i, g_i(V)[y_i] - g_i(V-bar)[y_i])."""
    n = f.shape[0]
    total = f.new_zeros(())
    for i in range(n):
        y = int(labels[i])
        s = cos(f[i], pos[i, y] - neg[i, y])
        total = total + (1 - w[i]) * s + alpha * w[i] * (1 - s)
    return -total / n


def literal_second(f, pos, neg, labels, w, delta):
    """Eq. 14-16 per image: the double loop, anchor i's own D1 block, the (D,) vector built each time."""
    n = f.shape[0]
    total = f.new_zeros(())
    for i in range(n):
        for j in range(n):
            yi, yj = int(labels[i]), int(labels[j])
            if yi == yj:
                continue
            d2 = (pos[i, yi] - neg[i, yi]) - (pos[i, yj] - neg[i, yj])
            total = total + w[i] * w[j] * torch.clamp(cos(f[i], d2) + delta, min=0)
    return total / (n * (n - 1)) if n > 1 else total


@st.composite
def per_image_batches(draw, max_n=6, max_c=5, max_d=5, dtype=torch.float64):
    """(f, pos, neg, labels, weight) with (N, C, D) text features; the difference vectors
    share a component (two prompts differ by one word); sometimes near-identical classes."""
    n = draw(st.integers(1, max_n))
    c = draw(st.integers(1, max_c))
    d = draw(st.integers(2, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    common = draw(st.sampled_from([0.0, 3.0]))
    neg = rng.normal(size=(n, c, d))
    d1 = rng.normal(size=(n, c, d))
    if c > 1 and draw(st.booleans()):  # classes 0 and 1 nearly tie in every image
        d1[:, 1] = d1[:, 0] * (1 + 1e-4 * rng.normal()) + 1e-4 * rng.normal(size=(n, d))
    pos = neg + d1 + common * rng.normal(size=(n, 1, d))
    f = rng.normal(size=(n, d))
    labels = rng.integers(0, draw(st.integers(1, c)), size=n)
    weight = rng.uniform(size=n)
    if draw(st.booleans()):
        weight = rng.integers(0, 2, size=n).astype(np.float64)
    f, pos, neg, weight = (torch.from_numpy(x).to(dtype) for x in (f, pos, neg, weight))
    return f, pos, neg, torch.from_numpy(labels), weight


def with_grad(batch):
    f, pos, neg, labels, w = batch
    return f.clone().requires_grad_(), pos.clone().requires_grad_(), neg.clone().requires_grad_(), labels, w


def gradients(value, inputs, retain_graph=False):
    """d value / d each input; zeros where the value does not depend on it."""
    if not value.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    found = torch.autograd.grad(value, inputs, retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(found, inputs)]


def assert_same_value_and_grads(got, want, inputs, atol=1e-10, of_largest=False):
    """Equal to ``atol``; with ``of_largest``, to ``atol`` times the largest entry (at
    least 1) of each expected tensor: float64 round-off of near-tie gradients, which
    grow as 1 / distance, reaches every class through the centring."""

    def close(a, b):
        scale = max(1.0, float(b.detach().abs().max())) if of_largest and b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=0, atol=atol * scale)

    close(got, want)
    for a, b in zip(gradients(got, inputs, retain_graph=True), gradients(want, inputs)):
        close(a, b)


@given(per_image_batches(), st.sampled_from([1.0, 100.0]))
def test_clip_logits_per_image_equal_the_literal_cosines(batch, scale):
    f, pos, _, _, _ = with_grad(batch)
    got, want = clip_logits(f, pos, scale), literal_logits(f, pos, scale)
    assert_same_value_and_grads(got.sum(), want.sum(), (f, pos), atol=1e-9)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@given(per_image_batches(), st.floats(0.0, 2.0))
def test_first_order_per_image_equals_literal_eq13(batch, alpha):
    f, pos, neg, labels, w = with_grad(batch)
    got = first_order_difference_loss(f, pos, neg, labels, w, alpha=alpha)
    assert_same_value_and_grads(got, literal_first(f, pos, neg, labels, w, alpha), (f, pos, neg))


@given(per_image_batches(), st.sampled_from([0.0, 0.1, 0.5, -0.2]))
def test_second_order_per_image_equals_literal_eq16(batch, delta):
    f, pos, neg, labels, w = with_grad(batch)
    got = second_order_difference_loss(f, pos, neg, labels, w, delta=delta)
    assert_same_value_and_grads(got, literal_second(f, pos, neg, labels, w, delta), (f, pos, neg))


@given(per_image_batches(), st.data())
def test_total_per_image_equals_the_literal_parts(batch, data):
    """Eq. 17 with per-image logits (Eq. 7-9-10) and differences (Eq. 13, 16)."""
    f, pos, neg, labels, w = with_grad(batch)
    n, c = pos.shape[:2]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    teacher = torch.from_numpy(rng.dirichlet(np.ones(c), size=n))
    labels = teacher.argmax(dim=1)
    scale, lam = 10.0, (0.5, 0.7, 1.3)
    out = fdbpl_loss(f, pos, neg, teacher, w, scale, *lam, alpha=0.8, delta=0.2)
    parts = (
        literal_positive(f, pos, teacher, w, scale),
        literal_negative(f, neg, w, scale),
        literal_first(f, pos, neg, labels, w, 0.8),
        literal_second(f, pos, neg, labels, w, 0.2),
    )
    for got, want in zip(out[1:], parts):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    want_total = parts[0] + lam[0] * parts[1] + lam[1] * parts[2] + lam[2] * parts[3]
    assert_same_value_and_grads(out.total, want_total, (f, pos, neg), atol=1e-8)
    # the RADP functions take the per-image logits
    pos_logits, neg_logits = clip_logits(f, pos, scale), clip_logits(f, neg, scale)
    torch.testing.assert_close(positive_distillation_loss(pos_logits, teacher, w), parts[0])
    torch.testing.assert_close(negative_uniform_loss(neg_logits, w), parts[1])


@pytest.mark.parametrize("materialise", [False, True])
@given(per_image_batches())
def test_class_level_features_expanded_per_image_give_todays_results(materialise, batch):
    """(C, D) features and the same features expanded to (N, C, D): same values and gradients
    (the materialised (N, C, D) features take the per-image path, which does not centre)."""
    f, pos3, neg3, labels, w = batch
    pos = pos3[0].clone().requires_grad_()
    neg = neg3[0].clone().requires_grad_()
    n = f.shape[0]
    teacher = torch.softmax(torch.randn(n, pos.shape[0], dtype=f.dtype), dim=1)

    def expanded(t):
        e = t.expand(n, -1, -1)
        return e.clone() if materialise else e

    for fn in (first_order_difference_loss, second_order_difference_loss, pcd_loss):
        for reduction in ("mean", "none"):
            want = fn(f, pos, neg, labels, w, reduction=reduction)
            got = fn(f, expanded(pos), expanded(neg), labels, w, reduction=reduction)
            assert_same_value_and_grads(got.sum(), want.sum(), (pos, neg), atol=1e-9, of_largest=True)
    want = fdbpl_loss(f, pos, neg, teacher, w)
    got = fdbpl_loss(f, expanded(pos), expanded(neg), teacher, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    torch.testing.assert_close(clip_logits(f, expanded(pos)), clip_logits(f, pos), rtol=0, atol=1e-9)


@given(per_image_batches(max_n=7, max_c=6, max_d=6), st.integers(1, 40))
def test_chunked_anchors_give_the_unchunked_result(batch, budget):
    """The anchors run in chunks of CHUNK_ELEMENTS elements; any chunk size gives the same."""
    f, pos, neg, labels, w = with_grad(batch)
    want = second_order_difference_loss(f, pos, neg, labels, w, reduction="none")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(per_image_module, "CHUNK_ELEMENTS", budget)
        got = second_order_difference_loss(f, pos, neg, labels, w, reduction="none")
    assert_same_value_and_grads(got.sum(), want.sum(), (f, pos, neg), atol=1e-12)


def plain_float32_second(f, pos, neg, labels, w, delta):
    """The per-image formula as one would write it in float32: (N, N, D) difference vectors."""
    n = f.shape[0]
    d1 = pos - neg
    rows = d1[torch.arange(n), labels]  # (N, D)
    others = d1[torch.arange(n)[:, None], labels[None, :]]  # (N, N, D): anchor i's row of y_j
    d2 = rows[:, None, :] - others
    s2 = torch.nn.functional.cosine_similarity(f[:, None, :], d2, dim=2, eps=1e-30)
    pair = (labels[:, None] != labels[None, :]) * torch.outer(w, w)
    return (pair * torch.relu(s2 + delta)).sum() / (n * (n - 1))


@given(st.integers(0, 2**31 - 1), st.floats(1e-5, 1e-2), st.integers(2, 5))
def test_near_ties_are_as_accurate_as_the_plain_float32_formula(seed, gap, near):
    """Classes whose difference vectors nearly tie, under a large shared component: the loss
    and its gradients in float32 are within 2x of the plain float32 formula's error."""
    rng = np.random.default_rng(seed)
    n, c, d = 12, near + 2, 32
    centre = rng.normal(size=(n, 1, d))
    d1 = np.concatenate([centre.repeat(near, axis=1), rng.normal(size=(n, 2, d))], axis=1)
    d1 = d1 * (1 + gap * rng.normal(size=(n, c, 1))) + gap * rng.normal(size=(n, c, d))
    neg = rng.normal(size=(n, c, d))
    pos = neg + d1 + 30.0 * rng.normal(size=(n, 1, d))
    f = rng.normal(size=(n, d))
    labels = torch.from_numpy(rng.integers(0, c, size=n))
    w = rng.uniform(size=n)
    arrays = [torch.from_numpy(x) for x in (f, pos, neg, w)]

    def value_and_grads(fn, dtype):
        args = [a.to(dtype).requires_grad_() for a in arrays]
        out = fn(*args[:3], labels, args[3], 0.1)
        return [out.detach().double()] + [g.double() for g in torch.autograd.grad(out, args[:3])]

    def errors(fn):
        exact = value_and_grads(literal_second, torch.float64)
        return [float((a - b).abs().max()) for a, b in zip(value_and_grads(fn, torch.float32), exact)]

    eps = torch.finfo(torch.float32).eps
    ours = errors(lambda *a: second_order_difference_loss(*a[:5], delta=a[5]))
    plain = errors(plain_float32_second)
    for e_ours, e_plain in zip(ours, plain):
        assert e_ours <= 2 * e_plain + 8 * eps, (ours, plain)


def test_gradcheck_per_image():
    torch.manual_seed(5)
    n, c, d = 5, 3, 4
    f = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(n, c, d, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(n, c, d, dtype=torch.float64, requires_grad=True)
    labels, w = torch.tensor([0, 1, 2, 1, 0]), torch.rand(n, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: first_order_difference_loss(*a, labels, w), (f, pos, neg))
    assert torch.autograd.gradcheck(
        lambda *a: second_order_difference_loss(*a, labels, w, delta=0.3, reduction="none"), (f, pos, neg)
    )
    assert torch.autograd.gradcheck(lambda f, p: clip_logits(f, p, 10.0), (f, pos))


@given(per_image_batches())
def test_identical_prompts_per_image_pass_no_gradient(batch):
    """D1 = 0 in every image: finite values, no gradient, as for class-level features."""
    f, _, neg, labels, w = with_grad(batch)
    pos = neg.detach().clone().requires_grad_()
    for fn in (first_order_difference_loss, second_order_difference_loss):
        loss = fn(f, pos, neg, labels, w)
        assert bool(torch.isfinite(loss))
        if loss.requires_grad:
            for g in torch.autograd.grad(loss, (f, pos, neg), allow_unused=True):
                assert g is None or bool((g == 0).all())


def test_modules_take_per_image_features():
    f, pos, neg, labels, w = _fixed_batch()
    teacher = torch.softmax(torch.randn(f.shape[0], pos.shape[1], dtype=f.dtype), dim=1)
    torch.testing.assert_close(
        FirstOrderDifferenceLoss(0.5)(f, pos, neg, labels, w),
        first_order_difference_loss(f, pos, neg, labels, w, 0.5),
    )
    torch.testing.assert_close(
        SecondOrderDifferenceLoss(0.2)(f, pos, neg, labels, w),
        second_order_difference_loss(f, pos, neg, labels, w, 0.2),
    )
    torch.testing.assert_close(PCDLoss()(f, pos, neg, labels, w), pcd_loss(f, pos, neg, labels, w))
    torch.testing.assert_close(
        FDBPLLoss()(f, pos, neg, teacher, w).total, fdbpl_loss(f, pos, neg, teacher, w).total
    )


def _fixed_batch(n=6, c=4, d=8):
    g = torch.Generator().manual_seed(7)
    f = torch.randn(n, d, generator=g)
    neg = torch.randn(n, c, d, generator=g)
    pos = neg + torch.randn(n, c, d, generator=g)
    return f, pos, neg, torch.randint(0, c, (n,), generator=g), torch.rand(n, generator=g)


@pytest.mark.parametrize(
    ("pos_shape", "neg_shape", "match"),
    [
        ((5, 3, 8), (5, 3, 8), "must share N"),
        ((6, 3, 8), (3, 8), "same shape"),
        ((6, 3, 7), (6, 3, 7), "must share D"),
        ((6, 3, 8, 1), (6, 3, 8, 1), "3 per image"),
    ],
)
def test_per_image_shape_errors_name_the_argument_and_shapes(pos_shape, neg_shape, match):
    f = torch.randn(6, 8)
    labels, w = torch.zeros(6, dtype=torch.long), torch.ones(6)
    for fn in (first_order_difference_loss, second_order_difference_loss):
        with pytest.raises(FDBPLError, match=match):
            fn(f, torch.randn(pos_shape), torch.randn(neg_shape), labels, w)
    with pytest.raises(FDBPLError, match=r"positive_text_features|same shape"):
        fdbpl_loss(f, torch.randn(pos_shape), torch.randn(neg_shape), torch.full((6, 3), 1 / 3), w)


def test_per_image_labels_are_checked_against_the_class_dimension():
    f, pos, neg, _, w = _fixed_batch(c=4)
    with pytest.raises(FDBPLError, match=r"class ids in \[0, 4\)"):
        second_order_difference_loss(f, pos, neg, torch.full((6,), 4), w)
