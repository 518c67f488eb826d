"""Every functional loss traces as one graph (no breaks, no data-dependent shapes) and matches eager."""

from __future__ import annotations

import pytest
import torch

from fdbpl.losses.functional import (
    fdbpl_loss,
    first_order_difference_loss,
    negative_uniform_loss,
    positive_distillation_loss,
    second_order_difference_loss,
)
from fdbpl.sparsify import sparsify


def _inputs():
    gen = torch.Generator().manual_seed(7)
    f = torch.randn(12, 16, generator=gen)
    pos = torch.randn(6, 16, generator=gen, requires_grad=True)
    neg = torch.randn(6, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 6, (12,), generator=gen)
    w = torch.rand(12, generator=gen)
    logits = torch.randn(12, 6, generator=gen, requires_grad=True)
    teacher = sparsify(torch.softmax(3 * torch.randn(12, 6, generator=gen), 1), 3, "ms")
    return f, pos, neg, labels, w, logits, teacher


CASES = {
    "positive_dense": lambda f, pos, neg, labels, w, logits, t: positive_distillation_loss(
        logits, t.to_dense(), w
    ),
    "positive_sparse": lambda f, pos, neg, labels, w, logits, t: positive_distillation_loss(logits, t, w),
    "negative": lambda f, pos, neg, labels, w, logits, t: negative_uniform_loss(logits, w),
    "first_order": lambda f, pos, neg, labels, w, logits, t: first_order_difference_loss(
        f, pos, neg, labels, w
    ),
    "second_order": lambda f, pos, neg, labels, w, logits, t: second_order_difference_loss(
        f, pos, neg, labels, w
    ),
    "fdbpl": lambda f, pos, neg, labels, w, logits, t: fdbpl_loss(f, pos, neg, t, w).total,
    # text features per image (N, C, D), as a CoCoOp learner gives them
    "first_order_per_image": lambda f, pos, neg, labels, w, logits, t: first_order_difference_loss(
        f, per_image(pos), per_image(neg), labels, w
    ),
    "second_order_per_image": lambda f, pos, neg, labels, w, logits, t: second_order_difference_loss(
        f, per_image(pos), per_image(neg), labels, w
    ),
    "fdbpl_per_image": lambda f, pos, neg, labels, w, logits, t: (
        fdbpl_loss(f, per_image(pos), per_image(neg), t, w).total
    ),
}


def per_image(text: torch.Tensor) -> torch.Tensor:
    """(C, D) -> (12, C, D), a different scale and shift per image (not an expand view)."""
    scale = torch.linspace(0.5, 1.5, 12)[:, None, None]
    return text[None] * scale + 0.1 * torch.cos(scale * torch.arange(text.shape[1]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fullgraph_compile_matches_eager(name):
    torch._dynamo.reset()
    fn = CASES[name]
    args = _inputs()
    eager = fn(*args)
    grads_eager = torch.autograd.grad(eager, [args[1], args[2], args[5]], allow_unused=True)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = compiled(*args)
    grads_got = torch.autograd.grad(got, [args[1], args[2], args[5]], allow_unused=True)
    torch.testing.assert_close(got, eager)
    for a, b in zip(grads_got, grads_eager):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
