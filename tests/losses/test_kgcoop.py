"""KgCoOp's knowledge-guided term against a literal re-reading of its authors' code
(htyao89/KgCoOp, KgCoOp/trainers/kgcoop.py: ``CustomCLIP.forward`` computes the score,
``KgCoOp.forward_backward`` adds ``self.w * score`` to the cross-entropy)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.errors import FDBPLError, ShapeError
from fdbpl.losses import KgCoOpLoss
from fdbpl.losses.functional import kgcoop_loss
from fdbpl.losses.functional.kgcoop import KGCOOP_WEIGHT


def authors_score(text_features, text_features_old, w):
    """The authors' lines, in their order: the learned features normalised, a cosine with
    eps 1e-7 against the normalised hand-crafted ones, one minus the mean, times W."""
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
    text_features_old = text_features_old / text_features_old.norm(dim=-1, keepdim=True)
    score = cos(text_features, text_features_old)
    score = 1.0 - torch.mean(score)
    return w * score


shapes = st.tuples(st.integers(1, 8), st.integers(1, 16))
weights = st.floats(0.0, 20.0)


@given(shape=shapes, w=weights, seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-3, 1e3))
def test_equals_the_authors_score_and_its_gradient(shape, w, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    learned = (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()
    handcrafted = torch.randn(*shape, generator=gen, dtype=torch.float64)
    ours = kgcoop_loss(learned, handcrafted, w)
    (g_ours,) = torch.autograd.grad(ours, learned)
    theirs = authors_score(learned, handcrafted, w)
    (g_theirs,) = torch.autograd.grad(theirs, learned)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-8, atol=1e-12)
    assert 0.0 <= float(ours.detach()) <= 2 * w + 1e-9


@given(shape=shapes, seed=st.integers(0, 2**31 - 1), a=st.floats(0.01, 100.0), b=st.floats(0.01, 100.0))
def test_depends_on_directions_only_and_is_zero_on_the_handcrafted_prompt(shape, seed, a, b):
    gen = torch.Generator().manual_seed(seed)
    learned, handcrafted = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(kgcoop_loss(a * learned, b * handcrafted), kgcoop_loss(learned, handcrafted))
    assert abs(float(kgcoop_loss(a * handcrafted, handcrafted))) < 1e-12
    torch.testing.assert_close(kgcoop_loss(-learned, learned, 1.0), torch.tensor(2.0, dtype=torch.float64))


def test_the_handcrafted_features_are_a_target_and_the_module_is_the_function():
    learned = torch.randn(5, 8, requires_grad=True)
    handcrafted = torch.randn(5, 8, requires_grad=True)
    loss = KgCoOpLoss()(learned, handcrafted)
    assert loss.grad_fn is not None
    grads = torch.autograd.grad(loss, [learned, handcrafted], allow_unused=True)
    assert grads[0] is not None and grads[1] is None
    torch.testing.assert_close(loss, kgcoop_loss(learned, handcrafted, KGCOOP_WEIGHT))
    assert KGCOOP_WEIGHT == 8.0  # the authors' base-to-new runs (TRAINER.COOP.W 8.0)


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (
            (torch.randn(3, 4), torch.randn(4, 4)),
            ShapeError,
            r"same shape \(C, D\), got \(3, 4\) and \(4, 4\)",
        ),
        ((torch.randn(3, 4, 2), torch.randn(3, 4, 2)), ShapeError, r"text_features: expected 2 dimension"),
        ((torch.randn(0, 4), torch.randn(0, 4)), ShapeError, "at least one class"),
        ((torch.randint(0, 3, (3, 4)), torch.randn(3, 4)), ShapeError, "floating-point"),
        ((torch.full((3, 4), float("nan")), torch.randn(3, 4)), FDBPLError, "text_features"),
        ((torch.randn(3, 4), torch.randn(3, 4), -1.0), FDBPLError, r"weight: expected a finite number >= 0"),
        ((torch.randn(3, 4), torch.randn(3, 4), float("nan")), FDBPLError, "weight: "),
    ],
)
def test_bad_inputs_are_refused_by_name(args, error, match):
    with pytest.raises(error, match=match):
        kgcoop_loss(*args)
