"""The FDBPL objective (Eq. 17): the four parts from inputs checked once."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from fdbpl._checks import check_weight, check_weights
from fdbpl.errors import InputValueError
from fdbpl.logits import CLIP_LOGIT_SCALE, check_logit_scale, clip_logits_unchecked
from fdbpl.losses.functional.pcd import check_features, first_order_unchecked, second_order_unchecked
from fdbpl.losses.functional.radp import (
    check_teacher,
    check_teacher_is_a_target,
    negative_uniform_unchecked,
    positive_distillation_unchecked,
)
from fdbpl.losses.functional.reduction import Reduction, check_reduction
from fdbpl.losses.weights import DEFAULT_WEIGHTS
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["FDBPLLossOutput", "fdbpl_loss"]


_FIELDS = ("total", "positive", "negative", "first_order", "second_order")


@dataclass(frozen=True, eq=False)
class FDBPLLossOutput:
    """The FDBPL objective (Eq. 17) and its four parts, unweighted, for logging.

    ``total = positive + lambda_neg * negative + lambda_diff1 * first_order
    + lambda_diff2 * second_order``, plus whatever :meth:`plus` added.

    It unpacks and indexes as the five-tuple ``(total, positive, negative, first_order,
    second_order)``; terms a base method adds (:meth:`plus`) are read by name, as
    attributes or ``out["name"]``, and :meth:`as_dict` lists every term, so adding one
    changes neither the length nor the unpacking.

    Example:
        >>> import torch
        >>> from fdbpl.losses import FDBPLLossOutput
        >>> one = torch.tensor(1.0)
        >>> out = FDBPLLossOutput(one, one, one, one, one).plus(torch.tensor(2.0), kg=torch.tensor(0.25))
        >>> total, *parts = out
        >>> float(total), len(parts), float(out.kg), sorted(out.as_dict())[:2]
        (3.0, 4, 0.25, ['first_order', 'kg'])
    """

    total: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor
    first_order: torch.Tensor
    second_order: torch.Tensor
    extra: Mapping[str, torch.Tensor] = field(default_factory=dict)
    #: The names of the five fields it unpacks as (as the NamedTuple it was).
    _fields: ClassVar[tuple[str, ...]] = _FIELDS

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(tuple(getattr(self, name) for name in _FIELDS))

    def __len__(self) -> int:
        return len(_FIELDS)

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            terms = self.as_dict()
            if key not in terms:
                raise KeyError(f"{key!r}: not a term of this output; it has {sorted(terms)}")
            return terms[key]
        return tuple(self)[key]

    def __getattr__(self, name: str) -> torch.Tensor:
        # only called for names that are not fields: the terms added by plus()
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no term {name!r}")

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Every term by name: the five fields, then the added ones."""
        return {**{name: getattr(self, name) for name in _FIELDS}, **self.extra}

    _asdict = as_dict  # the name it had as a NamedTuple

    def plus(self, total: torch.Tensor, **terms: torch.Tensor) -> FDBPLLossOutput:
        """A copy whose total has ``total`` added and which holds ``terms`` by name.

        Raises:
            InputValueError: a term name this output already has.
        """
        taken = sorted(set(terms) & set(self.as_dict()))
        if taken:
            raise InputValueError(f"terms: {taken} are already terms of this output")
        return replace(self, total=self.total + total, extra={**self.extra, **terms})


def fdbpl_loss(
    image_features: torch.Tensor,
    positive_text_features: torch.Tensor,
    negative_text_features: torch.Tensor,
    teacher: torch.Tensor | SparseSoftLabels,
    weight: torch.Tensor,
    logit_scale: float | torch.Tensor = CLIP_LOGIT_SCALE,
    lambda_neg: float = DEFAULT_WEIGHTS.lambda_neg,
    lambda_diff1: float = DEFAULT_WEIGHTS.lambda_diff1,
    lambda_diff2: float = DEFAULT_WEIGHTS.lambda_diff2,
    alpha: float = DEFAULT_WEIGHTS.alpha,
    delta: float = DEFAULT_WEIGHTS.delta,
    reduction: Reduction = "mean",
) -> FDBPLLossOutput:
    r"""The FDBPL objective, Eq. 17, with its parts.

    .. math::

        \mathcal{L} = \mathcal{L}_{pos} + \lambda_{neg}\mathcal{L}_{neg}
            + \lambda_{diff1}\mathcal{L}^{(1)}_{diff} + \lambda_{diff2}\mathcal{L}^{(2)}_{diff}

    The positive and negative logits are computed here (Eq. 7-8, :func:`clip_logits`)
    and the pseudo hard labels of Eq. 12-16 are the teacher's top-1. The inputs are
    checked once, not once per part.

    Args:
        image_features: :math:`(N, D)` student image features :math:`f(x_i)`.
        positive_text_features: :math:`(C, D)` :math:`g(V)`, not normalised; or
            :math:`(N, C, D)`, text features per image (a CoCoOp learner's), where image
            :math:`i` is compared with its own :math:`(C, D)` block in every part.
        negative_text_features: :math:`g(\bar V)`, the same shape.
        teacher: :math:`(N, C)` probabilities or :class:`SparseSoftLabels`.
        weight: :math:`(N,)` information weights, the ones stored in the RIL table.
        logit_scale: :math:`1/\tau` of Eq. 7-8; CLIP's 100 by default.
        lambda_neg, lambda_diff1, lambda_diff2: the weights of Eq. 17. The paper gives no
            values; the defaults weigh every part equally.
        alpha: :math:`\alpha` of Eq. 13.
        delta: :math:`\delta` of Eq. 16.
        reduction: applied to every part; see the part's function.

    Returns:
        :class:`FDBPLLossOutput` ``(total, positive, negative, first_order, second_order)``.
    """
    check_features(image_features, positive_text_features, negative_text_features)
    check_teacher(
        teacher, torch.Size((image_features.shape[0], positive_text_features.shape[-2])), "the batch"
    )
    check_teacher_is_a_target(
        teacher,
        {
            "image_features": image_features,
            "positive_text_features": positive_text_features,
            "negative_text_features": negative_text_features,
        },
    )
    check_weight("weight", weight, image_features.shape[0])
    check_logit_scale(logit_scale)
    check_reduction(reduction)
    check_weights(
        lambda_neg=lambda_neg, lambda_diff1=lambda_diff1, lambda_diff2=lambda_diff2, alpha=alpha, delta=delta
    )
    labels = teacher.top1 if isinstance(teacher, SparseSoftLabels) else teacher.argmax(dim=1)
    features = (image_features, positive_text_features, negative_text_features, labels, weight)
    positive = positive_distillation_unchecked(
        clip_logits_unchecked(image_features, positive_text_features, logit_scale), teacher, weight, reduction
    )
    negative = negative_uniform_unchecked(
        clip_logits_unchecked(image_features, negative_text_features, logit_scale), weight, reduction
    )
    first = first_order_unchecked(*features, alpha, reduction)
    second = second_order_unchecked(*features, delta, reduction)
    total = positive + lambda_neg * negative + lambda_diff1 * first + lambda_diff2 * second
    return FDBPLLossOutput(total, positive, negative, first, second)
