"""PromptSRC's self-regulating constraints against literal loops; Gaussian prompt aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.aggregation import GaussianPromptAggregation, gaussian_epoch_weights
from fdbpl.errors import FDBPLError
from fdbpl.losses import PromptSRCLoss
from fdbpl.losses.functional import feature_consistency_loss, logit_consistency_loss, promptsrc_loss


def literal_l1(a, b):
    """(1 / MD) sum_{m,d} |a_m / |a_m| - b_m / |b_m||, one entry at a time."""
    m, d = a.shape
    total = 0.0
    for i in range(m):
        na, nb = math.sqrt(sum(float(x) ** 2 for x in a[i])), math.sqrt(sum(float(x) ** 2 for x in b[i]))
        total += sum(abs(float(a[i, k]) / na - float(b[i, k]) / nb) for k in range(d))
    return total / (m * d)


def literal_kl(z_p, z):
    """(1 / NC) sum_i sum_c t_ic log(t_ic / p_ic), t = softmax(z), p = softmax(z_p)."""
    n, c = z.shape
    total = 0.0
    for i in range(n):
        t = [math.exp(float(v)) for v in z[i]]
        p = [math.exp(float(v)) for v in z_p[i]]
        st_, sp = sum(t), sum(p)
        total += sum((t[k] / st_) * math.log((t[k] / st_) / (p[k] / sp)) for k in range(c))
    return total / (n * c)


@st.composite
def pairs(draw, max_m=5, max_d=6):
    m, d = draw(st.integers(1, max_m)), draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    a = torch.from_numpy(rng.normal(size=(m, d)))
    b = a + draw(st.sampled_from([0.0, 0.1, 1.0])) * torch.from_numpy(rng.normal(size=(m, d)))
    return a, b


@given(pairs())
def test_feature_consistency_equals_the_literal_mean_absolute_difference(pair):
    a, b = pair
    assert abs(float(feature_consistency_loss(a, b)) - literal_l1(a, b)) < 1e-12


@given(pairs(max_d=7))
def test_logit_consistency_equals_the_literal_kl(pair):
    z_p, z = pair
    got = logit_consistency_loss(3 * z_p, 3 * z)
    assert abs(float(got) - literal_kl(3 * z_p, 3 * z)) < 1e-12
    assert float(logit_consistency_loss(z, z)) == pytest.approx(0.0, abs=1e-15)


@given(pairs(max_m=4, max_d=5), st.integers(1, 4), st.sampled_from(["none", "sum", "mean"]))
def test_reductions_are_over_images_with_the_text_term_counted_once_per_image(pair, classes, reduction):
    """Per image i: the literal terms of row i alone; "sum"/"mean" sum/average them."""
    f, f0 = pair
    n = f.shape[0]
    rng = np.random.default_rng(n * 31 + classes)
    t, t0 = (torch.from_numpy(rng.normal(size=(classes, f.shape[1]))) for _ in range(2))
    z, z0 = (torch.from_numpy(rng.normal(size=(n, classes))) for _ in range(2))
    out = promptsrc_loss(f, f0, t, t0, z, z0, 2.0, 3.0, 0.5, reduction=reduction)
    text = literal_l1(t, t0)
    rows = [
        (literal_l1(f[i : i + 1], f0[i : i + 1]), text, literal_kl(z[i : i + 1], z0[i : i + 1]))
        for i in range(n)
    ]
    pool = {"none": lambda v: v, "sum": lambda v: [sum(v)], "mean": lambda v: [sum(v) / n]}[reduction]
    for k, name in enumerate(("image", "text", "logits")):
        got = getattr(out, name).reshape(-1).tolist()
        assert got == pytest.approx(pool([r[k] for r in rows]), abs=1e-12), name
    want_total = pool([2.0 * r[0] + 3.0 * r[1] + 0.5 * r[2] for r in rows])
    assert out.total.reshape(-1).tolist() == pytest.approx(want_total, abs=1e-12)
    module = PromptSRCLoss(2.0, 3.0, 0.5, reduction=reduction)(f, f0, t, t0, z, z0)
    torch.testing.assert_close(module.total, out.total)
    with pytest.raises(FDBPLError, match="reduction"):
        PromptSRCLoss(reduction="max")


def test_total_weights_and_targets_get_no_gradient():
    g = torch.Generator().manual_seed(0)
    f, f0 = (
        torch.randn(4, 8, generator=g, requires_grad=True),
        torch.randn(4, 8, generator=g, requires_grad=True),
    )
    t, t0 = (
        torch.randn(3, 8, generator=g, requires_grad=True),
        torch.randn(3, 8, generator=g, requires_grad=True),
    )
    z, z0 = (
        torch.randn(4, 3, generator=g, requires_grad=True),
        torch.randn(4, 3, generator=g, requires_grad=True),
    )
    out = PromptSRCLoss(10.0, 25.0, 1.0)(f, f0, t, t0, z, z0)
    want = promptsrc_loss(f, f0, t, t0, z, z0)
    torch.testing.assert_close(out.total, 10 * out.image + 25 * out.text + out.logits)
    torch.testing.assert_close(out.total, want.total)
    out.total.backward()
    assert f0.grad is None and t0.grad is None and z0.grad is None
    assert f.grad is not None and t.grad is not None and z.grad is not None
    with pytest.raises(FDBPLError, match=r"must have the same shape \(M, D\)"):
        feature_consistency_loss(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(FDBPLError, match="image_weight"):
        promptsrc_loss(f, f0, t, t0, z, z0, image_weight=-1.0)


@given(st.integers(1, 30), st.floats(-5, 40), st.floats(0.1, 10))
def test_gaussian_weights_are_the_normalised_density(epochs, mean, std):
    w = gaussian_epoch_weights(epochs, mean, std)
    density = [math.exp(-((e - mean) ** 2) / (2 * std**2)) for e in range(1, epochs + 1)]
    total = sum(density)
    if total > 1e-300:  # where the plain formula does not underflow, it is the same
        for a, b in zip(w.tolist(), density):
            assert a == pytest.approx(b / total, rel=1e-9, abs=1e-12)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12) and bool((w >= 0).all())


def test_aggregation_is_the_weighted_sum_of_the_epochs_prompts_and_resumes():
    module = torch.nn.Linear(3, 2)
    module.bias.requires_grad_(False)  # frozen tensors are left alone
    bias = module.bias.detach().clone()
    weights = gaussian_epoch_weights(4, 2.5, 1.0)
    snapshots = []
    gpa = GaussianPromptAggregation(module, 4, 2.5, 1.0)
    for epoch in range(4):
        with torch.no_grad():
            module.weight.normal_()
        snapshots.append(module.weight.detach().double().clone())
        if epoch == 2:  # a resume: the sums go through the checkpoint
            saved = gpa.state_dict()
            gpa = GaussianPromptAggregation(module, 4, 2.5, 1.0)
            gpa.load_state_dict(saved)
        gpa.update(epoch)
    with pytest.raises(FDBPLError, match="new epoch"):
        gpa.update(3)
    gpa.apply()
    want = sum(float(w) * s for w, s in zip(weights, snapshots))
    torch.testing.assert_close(module.weight.detach().double(), want, rtol=0, atol=1e-6)
    assert torch.equal(module.bias, bias)
    early = GaussianPromptAggregation(module, 4)
    early.update(0)
    with pytest.raises(FDBPLError, match=r"epochs \[1, 2, 3\] were not added"):
        early.apply()
