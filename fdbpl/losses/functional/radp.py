"""Region-aware dual-prompt (RADP) losses: positive distillation (Eq. 9), negative "say no" (Eq. 10)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fdbpl._checks import check_logits, check_probabilities, check_weight, compute_dtype, shape_str
from fdbpl.errors import InputValueError, ShapeError
from fdbpl.losses.functional.reduction import Reduction, check_reduction, reduce
from fdbpl.losses.weights import DEFAULT_WEIGHTS
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["negative_uniform_loss", "positive_distillation_loss", "radp_loss"]


def _cross(t: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """``t * log_p`` with the limit ``0 * log 0 = 0``: a class the teacher gives no mass
    adds nothing, even where the student's logit is ``-inf`` (a masked class)."""
    return torch.where(t > 0, t * log_p.masked_fill(t <= 0, 0.0), 0.0)


def _sparse_kl(log_p: torch.Tensor, teacher: SparseSoftLabels) -> torch.Tensor:
    """KL(t || p) per row from the K stored entries and the fill mass, never densifying t."""
    values = teacher.values.detach().to(log_p.dtype)
    fill = teacher.fill.detach().to(log_p.dtype)
    log_p_kept = log_p.gather(1, teacher.indices)
    kept = (torch.xlogy(values, values) - _cross(values, log_p_kept)).sum(dim=1)
    # Every class outside the Top-K holds `fill`: sum_c fill * (log fill - log p_c).
    rest = teacher.num_classes - teacher.topk
    if rest == 0:
        return kept
    log_p_rest = log_p.scatter(1, teacher.indices, 0.0).sum(dim=1)
    return kept + rest * torch.xlogy(fill, fill) - _cross(fill, log_p_rest)


def positive_distillation_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | SparseSoftLabels,
    weight: torch.Tensor,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Entropy-weighted distillation into the positive prompts, Eq. 9.

    .. math::

        \mathcal{L}_{pos} = \sum_i w_i\, D_{KL}(t_i \,\|\, p_i)
        = \sum_i w_i \sum_c t_i(c) \log \frac{t_i(c)}{p_i(c)},
        \qquad p_i = \operatorname{softmax}(\text{student\_logits}_i)

    This is the forward KL from the teacher to the student (not the symmetric KL of the
    authors' code release). For :class:`SparseSoftLabels` the dense teacher is never
    built: MR labels use only the K stored entries, MS labels add
    :math:`\text{fill}_i \sum_{c \notin \text{Top-K}} (\log \text{fill}_i - \log p_i(c))`,
    where the sum over the other classes is the row sum of :math:`\log p_i` without its
    K stored entries. Logs and reductions run in float32 for half inputs.

    A class with no teacher mass adds nothing (:math:`0 \log 0 = 0`), so a student logit
    of ``-inf`` (a masked class) gives the finite literal KL where the teacher gives that
    class no mass, and ``+inf`` where it does. The teacher is a target: it never
    receives a gradient.

    Args:
        student_logits: :math:`(N, C)` positive-prompt logits, Eq. 7 (cosine times logit scale).
        teacher: :math:`(N, C)` teacher probabilities or :class:`SparseSoftLabels` with C classes.
        weight: :math:`(N,)` information weights :math:`w_i \in [0, 1]` (Eq. 6).
        reduction: ``"sum"`` is Eq. 9 literally; ``"mean"`` (default) divides it by N so the
            learning rate does not depend on the batch size; ``"none"`` returns the
            :math:`(N,)` terms :math:`w_i D_{KL}(t_i \| p_i)`.

    Returns:
        A scalar, or :math:`(N,)` for ``reduction="none"``.

    Raises:
        ValueError: on mismatched N or C, NaN or ``+inf`` logits, a row whose every
            logit is ``-inf``, weights outside ``[0, 1]``, invalid teacher probabilities,
            a teacher that requires grad while ``student_logits`` does not (the loss would
            have no gradient at all) or an unknown reduction.

    Example:
        >>> import torch
        >>> from fdbpl.losses.functional import positive_distillation_loss
        >>> teacher = torch.tensor([[0.7, 0.2, 0.1]])
        >>> positive_distillation_loss(teacher.log(), teacher, torch.ones(1)).abs() < 1e-6
        tensor(True)
    """
    check_logits("student_logits", student_logits)
    check_reduction(reduction)
    check_teacher(teacher, student_logits.shape, "student_logits")
    check_teacher_is_a_target(teacher, {"student_logits": student_logits})
    check_weight("weight", weight, student_logits.shape[0])
    return positive_distillation_unchecked(student_logits, teacher, weight, reduction)


def check_teacher(teacher: torch.Tensor | SparseSoftLabels, shape: torch.Size, against: str) -> None:
    """A teacher of ``shape`` (N, C): probabilities, or :class:`SparseSoftLabels` of N rows and C classes."""
    n, num_classes = shape
    if isinstance(teacher, SparseSoftLabels):
        if len(teacher) != n or teacher.num_classes != num_classes:
            raise ShapeError(
                f"teacher: expected SparseSoftLabels with N={n} rows and C={num_classes} classes "
                f"to match {against} {tuple(shape)}, got N={len(teacher)} and C={teacher.num_classes}"
            )
        return
    check_probabilities("teacher", teacher)
    if teacher.shape != shape:
        raise ShapeError(
            f"{against} and teacher must have the same shape (N, C), "
            f"got {tuple(shape)} and {tuple(teacher.shape)}"
        )


def check_teacher_is_a_target(
    teacher: torch.Tensor | SparseSoftLabels, inputs: dict[str, torch.Tensor]
) -> None:
    """Refuse a teacher that asks for a gradient when none of the loss's ``inputs`` has one:
    the teacher is a fixed target (detached), so such a loss has no gradient at all, and its
    ``backward`` would fail far from here."""
    wants = (teacher.values if isinstance(teacher, SparseSoftLabels) else teacher).requires_grad
    if wants and torch.is_grad_enabled() and not any(t.requires_grad for t in inputs.values()):
        names = " and ".join(inputs)
        raise InputValueError(
            f"teacher: it requires grad, but the teacher is a fixed target that receives no gradient, and "
            f"{names} {'does' if len(inputs) == 1 else 'do'} not require grad: the loss would have no gradient; "
            "give the student's outputs with grad to train, or teacher.detach() to compute a value"
        )


def positive_distillation_unchecked(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | SparseSoftLabels,
    weight: torch.Tensor,
    reduction: Reduction,
) -> torch.Tensor:
    """:func:`positive_distillation_loss` without its checks (inputs checked once by the caller)."""
    log_p = F.log_softmax(student_logits.to(compute_dtype(student_logits)), dim=1)
    if isinstance(teacher, SparseSoftLabels):
        kl = _sparse_kl(log_p, teacher)
    else:
        t = teacher.detach().to(log_p.dtype)
        kl = (torch.xlogy(t, t) - _cross(t, log_p)).sum(dim=1)
    return reduce(weight.to(log_p.dtype) * kl, reduction)


def negative_uniform_loss(
    negative_logits: torch.Tensor,
    weight: torch.Tensor,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""Teach the negative prompts to say "no" to low-information regions, Eq. 10.

    .. math::

        \mathcal{L}_{neg} = \sum_i (1 - w_i)\, D_{KL}(u \,\|\, \bar p_i)
        = \sum_i (1 - w_i) \sum_c \frac{1}{C} \log \frac{1/C}{\bar p_i(c)},
        \qquad \bar p_i = \operatorname{softmax}(\text{negative\_logits}_i)

    The KL term is :math:`-\log C - \frac{1}{C}\sum_c \log \bar p_i(c)`: non-negative and
    zero exactly when the negative prediction is uniform. A ``-inf`` logit (a masked
    class) gives ``+inf``, the literal value: the uniform target puts mass on every class.

    Args:
        negative_logits: :math:`(N, C)` negative-prompt logits, Eq. 8.
        weight: :math:`(N,)` information weights :math:`w_i \in [0, 1]`.
        reduction: ``"sum"`` is Eq. 10 literally; ``"mean"`` (default) divides by N;
            ``"none"`` returns the :math:`(N,)` terms.

    Returns:
        A scalar, or :math:`(N,)` for ``reduction="none"``.

    Example:
        >>> import torch
        >>> from fdbpl.losses.functional import negative_uniform_loss
        >>> negative_uniform_loss(torch.zeros(2, 5), torch.tensor([0.0, 0.5]))
        tensor(0.)
    """
    check_logits("negative_logits", negative_logits)
    check_reduction(reduction)
    check_weight("weight", weight, negative_logits.shape[0])
    return negative_uniform_unchecked(negative_logits, weight, reduction)


def negative_uniform_unchecked(
    negative_logits: torch.Tensor, weight: torch.Tensor, reduction: Reduction
) -> torch.Tensor:
    """:func:`negative_uniform_loss` without its checks (inputs checked once by the caller)."""
    log_p = F.log_softmax(negative_logits.to(compute_dtype(negative_logits)), dim=1)
    kl = -math.log(negative_logits.shape[1]) - log_p.mean(dim=1)
    return reduce((1 - weight.to(log_p.dtype)) * kl, reduction)


def radp_loss(
    positive_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    teacher: torch.Tensor | SparseSoftLabels,
    weight: torch.Tensor,
    lambda_neg: float = DEFAULT_WEIGHTS.lambda_neg,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""The similarity paradigm of Eq. 17: :math:`\mathcal{L}_{pos} + \lambda_{neg}\mathcal{L}_{neg}`.

    See :func:`positive_distillation_loss` (Eq. 9) and :func:`negative_uniform_loss` (Eq. 10)
    for the arguments; both logits are :math:`(N, C)`. The inputs are checked once.
    """
    check_logits("positive_logits", positive_logits)
    check_logits("negative_logits", negative_logits)
    if positive_logits.shape != negative_logits.shape:
        raise ShapeError(
            "positive_logits and negative_logits must have the same shape (N, C), "
            f"got {shape_str(positive_logits)} and {shape_str(negative_logits)}"
        )
    check_reduction(reduction)
    check_teacher(teacher, positive_logits.shape, "positive_logits")
    check_teacher_is_a_target(
        teacher, {"positive_logits": positive_logits, "negative_logits": negative_logits}
    )
    check_weight("weight", weight, positive_logits.shape[0])
    pos = positive_distillation_unchecked(positive_logits, teacher, weight, reduction)
    return pos + lambda_neg * negative_uniform_unchecked(negative_logits, weight, reduction)
