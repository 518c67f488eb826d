"""Eq. 9 and Eq. 10 against literal implementations; properties of the RADP losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import prob_rows

from fdbpl.errors import FDBPLError, InputValueError
from fdbpl.losses import NegativeUniformLoss, PositiveDistillationLoss, RADPLoss
from fdbpl.losses.functional import negative_uniform_loss, positive_distillation_loss, radp_loss
from fdbpl.sparsify import sparsify


def literal_softmax(row):
    m = max(row)
    e = [torch.exp(x - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def literal_pos(logits: torch.Tensor, teacher: list[list[float]], weight: torch.Tensor) -> torch.Tensor:
    """Eq. 9: sum_i w_i sum_c t log(t / p), one element at a time (terms with t = 0 are 0)."""
    total = logits.new_zeros(())
    for i, t_row in enumerate(teacher):
        p = literal_softmax(list(logits[i]))
        kl = sum(t * (math.log(t) - torch.log(p[c])) for c, t in enumerate(t_row) if t > 0)
        total = total + weight[i] * kl
    return total


def literal_neg(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 10: sum_i (1 - w_i) sum_c (1/C) log((1/C) / p_c), one element at a time."""
    c = logits.shape[1]
    total = logits.new_zeros(())
    for i in range(logits.shape[0]):
        p = literal_softmax(list(logits[i]))
        total = total + (1 - weight[i]) * sum((1 / c) * (math.log(1 / c) - torch.log(pc)) for pc in p)
    return total


@st.composite
def radp_case(draw):
    teacher = draw(prob_rows(max_n=5, max_c=8))
    n, c = teacher.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    logits = torch.from_numpy(rng.normal(size=(n, c)) * 3).requires_grad_()
    weight = torch.from_numpy(rng.uniform(size=n))
    k = draw(st.integers(1, c))
    kind = draw(st.sampled_from(["dense", "ms", "mr"]))
    labels = teacher if kind == "dense" else sparsify(teacher, k, kind)
    return logits, labels, weight


@given(radp_case())
def test_positive_equals_literal_eq9_values_and_gradients(case):
    logits, teacher, weight = case
    dense = teacher if isinstance(teacher, torch.Tensor) else teacher.to_dense()
    got = positive_distillation_loss(logits, teacher, weight, reduction="sum")
    want = literal_pos(logits, dense.tolist(), weight)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_want,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-10)


@given(radp_case())
def test_negative_equals_literal_eq10_values_and_gradients(case):
    logits, _, weight = case
    got = negative_uniform_loss(logits, weight, reduction="sum")
    want = literal_neg(logits, weight)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_want,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-10)


@given(radp_case())
def test_sparse_teacher_equals_its_dense_form(case):
    logits, teacher, weight = case
    if isinstance(teacher, torch.Tensor):
        return
    for reduction in ("none", "sum", "mean"):
        torch.testing.assert_close(
            positive_distillation_loss(logits, teacher, weight, reduction),
            positive_distillation_loss(logits, teacher.to_dense(), weight, reduction),
            rtol=0,
            atol=1e-12,
        )


@given(radp_case())
def test_reductions_agree(case):
    logits, teacher, weight = case
    for fn, args in (
        (positive_distillation_loss, (logits, teacher, weight)),
        (negative_uniform_loss, (logits, weight)),
    ):
        none = fn(*args, reduction="none")
        assert none.shape == (logits.shape[0],)
        torch.testing.assert_close(fn(*args, reduction="sum"), none.sum())
        torch.testing.assert_close(fn(*args, reduction="mean"), none.mean())


@given(radp_case())
def test_kl_is_non_negative(case):
    logits, teacher, _ = case
    ones = torch.ones(logits.shape[0], dtype=torch.float64)
    assert bool((positive_distillation_loss(logits, teacher, ones, "none") >= -1e-12).all())
    assert bool((negative_uniform_loss(logits, ones * 0, "none") >= -1e-12).all())


@given(prob_rows(max_c=10))
def test_kl_is_zero_when_student_equals_teacher(teacher):
    teacher = (teacher + 1e-3) / (teacher + 1e-3).sum(1, keepdim=True)  # strictly positive
    w = torch.ones(teacher.shape[0], dtype=torch.float64)
    loss = positive_distillation_loss(teacher.log() + 5.0, teacher, w, "none")
    torch.testing.assert_close(loss, torch.zeros_like(loss), rtol=0, atol=1e-12)


@given(radp_case())
def test_eq10_is_minimal_at_uniform_negative_predictions(case):
    logits, _, weight = case
    uniform = torch.zeros_like(logits) + 1.7
    assert abs(float(negative_uniform_loss(uniform, weight, "sum"))) < 1e-12
    assert float(negative_uniform_loss(logits.detach(), weight, "sum")) >= -1e-12


@given(radp_case(), st.data())
def test_invariant_to_permuting_the_batch_and_relabelling_classes(case, data):
    logits, teacher, weight = case
    dense = teacher if isinstance(teacher, torch.Tensor) else teacher.to_dense()
    n, c = dense.shape
    rows = torch.tensor(data.draw(st.permutations(range(n))))
    cols = torch.tensor(data.draw(st.permutations(range(c))))
    base = positive_distillation_loss(logits, dense, weight, "none")
    moved = positive_distillation_loss(logits[rows][:, cols], dense[rows][:, cols], weight[rows], "none")
    torch.testing.assert_close(moved, base[rows], rtol=0, atol=1e-12)
    neg = negative_uniform_loss(logits, weight, "none")
    torch.testing.assert_close(negative_uniform_loss(logits[rows][:, cols], weight[rows], "none"), neg[rows])


def test_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    teacher = sparsify(torch.softmax(torch.randn(4, 6, dtype=torch.float64), 1), 3, "ms")
    w = torch.rand(4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: positive_distillation_loss(x, teacher, w), (logits,))
    assert torch.autograd.gradcheck(lambda x: negative_uniform_loss(x, w), (logits,))


def test_modules_equal_functions():
    torch.manual_seed(1)
    pos, neg = torch.randn(5, 7), torch.randn(5, 7)
    teacher = sparsify(torch.softmax(2 * torch.randn(5, 7), 1), 2, "mr")
    w = torch.rand(5)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            PositiveDistillationLoss(reduction)(pos, teacher, w),
            positive_distillation_loss(pos, teacher, w, reduction),
        )
        torch.testing.assert_close(
            NegativeUniformLoss(reduction)(neg, w), negative_uniform_loss(neg, w, reduction)
        )
        torch.testing.assert_close(
            RADPLoss(0.3, reduction)(pos, neg, teacher, w),
            positive_distillation_loss(pos, teacher, w, reduction)
            + 0.3 * negative_uniform_loss(neg, w, reduction),
        )
        torch.testing.assert_close(
            RADPLoss(0.3, reduction)(pos, neg, teacher, w), radp_loss(pos, neg, teacher, w, 0.3, reduction)
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_reduce_in_float32(dtype):
    torch.manual_seed(2)
    logits = torch.randn(6, 9)
    teacher = sparsify(torch.softmax(torch.randn(6, 9), 1), 4, "ms")
    w = torch.rand(6)
    got = positive_distillation_loss(logits.to(dtype), teacher, w.to(dtype))
    assert got.dtype == torch.float32
    want = positive_distillation_loss(logits.to(dtype).float(), teacher, w.to(dtype).float())
    torch.testing.assert_close(got, want)
    assert negative_uniform_loss(logits.to(dtype), w.to(dtype)).dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: positive_distillation_loss(torch.randn(3, 4), torch.full((3, 5), 0.2), torch.ones(3)),
            r"student_logits and teacher must have the same shape \(N, C\), got \(3, 4\) and \(3, 5\)",
        ),
        (
            lambda: positive_distillation_loss(
                torch.randn(3, 4), sparsify(torch.full((2, 4), 0.25), 2), torch.ones(3)
            ),
            r"teacher: expected SparseSoftLabels with N=3 rows and C=4 classes .* got N=2 and C=4",
        ),
        (
            lambda: positive_distillation_loss(torch.randn(3, 4), torch.full((3, 4), 0.25), torch.ones(2)),
            r"weight: expected size 3 in dimension 0 \(N, the batch size\), got shape \(2\)",
        ),
        (
            lambda: positive_distillation_loss(
                torch.randn(3, 4), torch.full((3, 4), 0.25), torch.full((3,), 1.5)
            ),
            r"weight: expected values in \[0, 1\], got min 1.5 and max 1.5",
        ),
        (
            lambda: positive_distillation_loss(torch.randn(3, 4), torch.full((3, 4), 0.3), torch.ones(3)),
            r"teacher: expected rows that sum to 1",
        ),
        (
            lambda: negative_uniform_loss(torch.randn(3), torch.ones(3)),
            r"negative_logits: expected 2 dimension\(s\) \(N, C\) of logits, got 1",
        ),
        (
            lambda: negative_uniform_loss(torch.randn(3, 4), torch.ones(3), reduction="avg"),
            r"reduction: expected one of \('mean', 'sum', 'none'\), got 'avg'",
        ),
        (
            lambda: RADPLoss()(torch.randn(3, 4), torch.randn(3, 5), torch.full((3, 4), 0.25), torch.ones(3)),
            r"positive_logits and negative_logits must have the same shape",
        ),
        (lambda: RADPLoss(reduction="bad"), r"reduction: expected one of"),
    ],
)
def test_errors_name_the_argument_and_shapes(call, match):
    with pytest.raises(FDBPLError, match=match):
        call()


@given(radp_case(), st.data())
def test_masked_classes_without_teacher_mass_give_the_finite_literal_kl(case, data):
    """A student logit of -inf where the teacher has no mass: the literal Eq. 9, finite."""
    logits, labels, weight = case
    dense = labels if isinstance(labels, torch.Tensor) else labels.to_dense()
    masked = torch.from_numpy(
        np.array(data.draw(st.lists(st.booleans(), min_size=dense.numel(), max_size=dense.numel())))
    )
    masked = masked.view_as(dense) & (dense == 0)
    x = logits.detach().masked_fill(masked, -math.inf).requires_grad_()
    got = positive_distillation_loss(x, labels, weight, reduction="sum")
    want = literal_pos(x, dense.tolist(), weight)
    assert bool(torch.isfinite(got))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    (g,) = torch.autograd.grad(got, x)
    (g_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(g, g_want, rtol=1e-9, atol=1e-9)
    assert bool((g[masked] == 0).all())


def test_a_masked_class_with_teacher_mass_gives_infinity():
    teacher = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    logits = torch.tensor([[0.0, -math.inf, 1.0]], dtype=torch.float64)
    assert positive_distillation_loss(logits, teacher, torch.ones(1, dtype=torch.float64)) == math.inf


@pytest.mark.parametrize("kind", ["dense", "mr", "ms"])
def test_the_teacher_receives_no_gradient(kind):
    probs = torch.softmax(torch.randn(4, 6, dtype=torch.float64), dim=1).requires_grad_()
    teacher = probs if kind == "dense" else sparsify(probs, 3, kind)
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    loss = positive_distillation_loss(logits, teacher, torch.rand(4, dtype=torch.float64))
    grads = torch.autograd.grad(loss, [logits, probs], allow_unused=True)
    assert grads[0] is not None and grads[1] is None


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (torch.tensor([[0.0, math.nan]]), r"student_logits: expected finite logits or -inf"),
        (torch.tensor([[0.0, math.inf]]), r"student_logits: expected finite logits or -inf"),
        (torch.tensor([[-math.inf, -math.inf]]), r"student_logits: row 0 has no finite logit"),
    ],
)
def test_nan_and_infinite_logits_are_refused(logits, match):
    with pytest.raises(FDBPLError, match=match):
        positive_distillation_loss(logits, torch.tensor([[0.5, 0.5]]), torch.ones(1))
    with pytest.raises(FDBPLError, match=match.replace("student_logits", "negative_logits")):
        negative_uniform_loss(logits, torch.ones(1))


@pytest.mark.parametrize("kind", ["dense", "mr", "ms"])
def test_a_teacher_asking_for_the_only_gradient_is_refused_naming_the_fix(kind):
    """The teacher is a target (detached): when it is the only input that requires grad the
    loss has none, and a clear refusal replaces a backward that fails far away ("element 0 of
    tensors does not require grad")."""
    probs = torch.softmax(torch.randn(4, 6), dim=1).requires_grad_()
    teacher = probs if kind == "dense" else sparsify(probs, 3, kind)
    student = torch.randn(4, 6)
    with pytest.raises(
        InputValueError, match=r"^teacher: it requires grad, .*student_logits does not require"
    ):
        positive_distillation_loss(student, teacher, torch.rand(4))
    with pytest.raises(InputValueError, match=r"positive_logits and negative_logits do not require grad"):
        radp_loss(student, student, teacher, torch.rand(4))
    with torch.no_grad():  # no graph is being built: nothing to refuse
        positive_distillation_loss(student, teacher, torch.rand(4))
    positive_distillation_loss(
        student, teacher.detach() if kind == "dense" else sparsify(probs.detach(), 3, kind), torch.rand(4)
    )
