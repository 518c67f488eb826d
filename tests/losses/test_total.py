"""Eq. 7-8 logits and Eq. 17, the FDBPL objective."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import pcd_batches

from fdbpl.errors import FDBPLError
from fdbpl.losses import FDBPLLoss, FDBPLLossOutput
from fdbpl.losses.functional import (
    clip_logits,
    fdbpl_loss,
    first_order_difference_loss,
    negative_uniform_loss,
    positive_distillation_loss,
    second_order_difference_loss,
)
from fdbpl.sparsify import sparsify


def literal_logits(f, t, scale):
    """Eq. 7-8: scale * cos(f_i, t_c), element by element."""
    out = torch.empty(f.shape[0], t.shape[0], dtype=f.dtype)
    for i in range(f.shape[0]):
        for c in range(t.shape[0]):
            out[i, c] = scale * (f[i] @ t[c]) / (f[i].norm() * t[c].norm())
    return out


@given(pcd_batches(), st.floats(1.0, 100.0))
def test_clip_logits_equal_literal_eq7(batch, scale):
    f, pos, _, _, _ = batch
    torch.testing.assert_close(clip_logits(f, pos, scale), literal_logits(f, pos, scale), rtol=0, atol=1e-10)


@given(pcd_batches(), st.sampled_from(["mr", "ms"]), st.sampled_from(["mean", "sum", "none"]))
def test_total_is_eq17_over_the_parts(batch, strategy, reduction):
    f, pos, neg, _, w = batch
    gen = torch.Generator().manual_seed(f.shape[0])
    teacher = sparsify(
        torch.softmax(3 * torch.randn(f.shape[0], pos.shape[0], generator=gen, dtype=f.dtype), 1),
        max(1, pos.shape[0] // 2),
        strategy,
    )
    lam = dict(lambda_neg=0.7, lambda_diff1=0.3, lambda_diff2=2.0)
    out = fdbpl_loss(f, pos, neg, teacher, w, 50.0, alpha=0.4, delta=0.05, reduction=reduction, **lam)
    assert isinstance(out, FDBPLLossOutput)
    labels = teacher.top1
    parts = FDBPLLossOutput(
        total=None,
        positive=positive_distillation_loss(literal_logits(f, pos, 50.0), teacher, w, reduction),
        negative=negative_uniform_loss(literal_logits(f, neg, 50.0), w, reduction),
        first_order=first_order_difference_loss(f, pos, neg, labels, w, 0.4, reduction),
        second_order=second_order_difference_loss(f, pos, neg, labels, w, 0.05, reduction),
    )
    for name in ("positive", "negative", "first_order", "second_order"):
        torch.testing.assert_close(getattr(out, name), getattr(parts, name), rtol=0, atol=1e-10)
    want = parts.positive + 0.7 * parts.negative + 0.3 * parts.first_order + 2.0 * parts.second_order
    torch.testing.assert_close(out.total, want, rtol=0, atol=1e-10)
    module = FDBPLLoss(alpha=0.4, delta=0.05, reduction=reduction, **lam)(f, pos, neg, teacher, w, 50.0)
    for a, b in zip(module, out):
        torch.testing.assert_close(a, b)


def test_dense_teacher_takes_labels_from_its_argmax():
    torch.manual_seed(5)
    f, pos, neg = torch.randn(6, 8), torch.randn(4, 8), torch.randn(4, 8)
    probs = torch.softmax(2 * torch.randn(6, 4), 1)
    w = torch.rand(6)
    dense = FDBPLLoss()(f, pos, neg, probs, w)
    sparse = FDBPLLoss()(f, pos, neg, sparsify(probs, 4, "mr"), w)
    for a, b in zip(dense, sparse):
        torch.testing.assert_close(a, b)


def test_backward_reaches_both_prompt_spaces_and_a_learnable_scale():
    torch.manual_seed(6)
    f = torch.randn(8, 16)
    pos = torch.randn(5, 16, requires_grad=True)
    neg = torch.randn(5, 16, requires_grad=True)
    scale = torch.tensor(4.6, requires_grad=True)
    teacher = sparsify(torch.softmax(3 * torch.randn(8, 5), 1), 2, "ms")
    out = FDBPLLoss()(f, pos, neg, teacher, torch.rand(8), logit_scale=scale.exp())
    out.total.backward()
    for t in (pos, neg, scale):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and bool(t.grad.abs().sum() > 0)


@pytest.mark.parametrize("scale", [-1.0, 0.0, float("nan"), float("inf"), torch.tensor(-2.0)])
def test_a_non_positive_or_non_finite_logit_scale_is_refused(scale):
    from fdbpl.errors import FDBPLError

    with pytest.raises(FDBPLError, match=r"logit_scale: expected a positive finite multiplier"):
        clip_logits(torch.randn(2, 4), torch.randn(3, 4), scale)


#: Every loss entry point with weights, and the weights each takes (module, function, arguments).
WEIGHTED = {
    "FDBPLLoss": ("lambda_neg", "lambda_diff1", "lambda_diff2", "alpha", "delta"),
    "fdbpl_loss": ("lambda_neg", "lambda_diff1", "lambda_diff2", "alpha", "delta"),
    "PCDLoss": ("lambda_diff1", "lambda_diff2", "alpha", "delta"),
    "pcd_loss": ("lambda_diff1", "lambda_diff2", "alpha", "delta"),
    "FirstOrderDifferenceLoss": ("alpha",),
    "first_order_difference_loss": ("alpha",),
    "SecondOrderDifferenceLoss": ("delta",),
    "second_order_difference_loss": ("delta",),
}


def call_with(entry, **weights):
    """Build the module (construction checks) or call the function on a small batch."""
    import fdbpl.losses as modules
    import fdbpl.losses.functional as functions

    if hasattr(modules, entry):
        return getattr(modules, entry)(**weights)
    g = torch.Generator().manual_seed(0)
    f, pos, neg = (torch.randn(s, 8, generator=g) for s in (4, 3, 3))
    w = torch.rand(4, generator=g)
    if entry == "fdbpl_loss":
        return fdbpl_loss(f, pos, neg, torch.softmax(torch.randn(4, 3, generator=g), 1), w, **weights)
    return getattr(functions, entry)(f, pos, neg, torch.tensor([0, 1, 2, 0]), w, **weights)


@pytest.mark.parametrize("entry", list(WEIGHTED))
@given(
    data=st.data(),
    bad=st.sampled_from([float("nan"), float("inf"), -float("inf"), None, "x", True, [1.0], "1.0"]),
)
def test_non_finite_or_non_numeric_weights_are_refused_naming_them(entry, data, bad):
    name = data.draw(st.sampled_from(WEIGHTED[entry]))
    with pytest.raises(ValueError, match=f"^{name}: expected a finite number, got"):
        call_with(entry, **{name: bad})
    call_with(entry, **{name: data.draw(st.floats(-10, 10, allow_nan=False))})  # finite numbers pass


@given(st.lists(st.sampled_from(["kg", "src_image", "extra_term"]), unique=True))
def test_output_unpacks_as_five_fields_whatever_terms_are_added(names):
    """Terms added by name change neither the unpacking nor the five fields; the total grows."""
    five = [torch.tensor(float(k)) for k in range(1, 6)]
    out = FDBPLLossOutput(*five)
    for k, name in enumerate(names):
        out = out.plus(torch.tensor(10.0), **{name: torch.tensor(100.0 + k)})
    total, positive, negative, first, second = out
    assert len(out) == 5 and float(total) == 1.0 + 10.0 * len(names)
    assert [float(v) for v in (positive, negative, first, second)] == [2.0, 3.0, 4.0, 5.0]
    assert [float(v) for v in out[1:]] == [2.0, 3.0, 4.0, 5.0]
    assert list(out.as_dict()) == ["total", "positive", "negative", "first_order", "second_order", *names]
    for k, name in enumerate(names):
        assert float(getattr(out, name)) == float(out[name]) == 100.0 + k
    with pytest.raises(AttributeError, match="no term 'absent'"):
        out.absent  # noqa: B018
    with pytest.raises(KeyError, match="absent"):
        out["absent"]
    with pytest.raises(FDBPLError, match="already terms"):
        out.plus(torch.tensor(0.0), positive=torch.tensor(0.0))
