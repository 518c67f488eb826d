"""What a base method declares: :class:`MethodSpec`, and the terms it may add to a run.

A method is its prompt learner (a :class:`~fdbpl.prompts.PromptLearnerBase` subclass,
whose class attributes say what it can do), the learner options it takes from the run's
:class:`~fdbpl.train.TrainConfig`, its own refusals of a configuration, its own options
(a frozen dataclass, given as ``TrainConfig.method_options``) and, if it has any, the loss
terms it adds to FDBPL's total (:class:`MethodTerms`). Training, evaluation,
:class:`~fdbpl.prompts.PromptModel` and the command line read these and name no method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from fdbpl.errors import InputValueError

__all__ = ["ExtraLoss", "MethodSpec", "MethodTerms", "RunContext", "StepOutputs", "random_context_lengths"]


def random_context_lengths(config: Any) -> dict[str, int | None]:
    """``n_ctx`` per space for the spaces without an init phrase (``TrainConfig.n_ctx``)."""
    inits = {"positive": config.positive_init, "negative": config.negative_init}
    return {space: config.n_ctx for space, init in inits.items() if init is None}


@dataclass(frozen=True)
class RunContext:
    """What a method's terms may use, built once per run."""

    student: torch.nn.Module  # the frozen CLIP
    learner: torch.nn.Module  # the prompt learner being trained
    classnames: Sequence[str]  # the table's class names (normalised when it was built)
    tokenizer: Any  # the student's tokenizer, or None for its default
    config: Any  # the run's TrainConfig
    options: Any  # the method's own options (``MethodSpec.options`` parsed), or None
    device: torch.device
    logit_scale: torch.Tensor | float  # the frozen student's
    template: str  # the prompt the table's teacher used, "{}" for the class name


@dataclass(frozen=True)
class StepOutputs:
    """One training step's forward pass, as a method's terms see it."""

    images: torch.Tensor | None  # (N, 3, S, S), or None when the table's stored features were used
    image_features: torch.Tensor  # (N, D)
    positive: torch.Tensor  # (C', D), or (N, C', D) for per-image learners
    negative: torch.Tensor
    classes: torch.Tensor | None  # the step's class subset (ids), or None for all classes


class ExtraLoss(NamedTuple):
    """A method's addition to the step's total, and its parts by name (logged as such)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class MethodTerms:
    """What a method adds to a run beyond FDBPL's loss: override what applies.

    :meth:`loss` is added to every step's total; :meth:`end_of_epoch` runs after each
    epoch on every rank; :meth:`state_dict` is saved in the run's checkpoint (top-level
    keys) and given back to :meth:`load_state_dict` (the whole checkpoint) on resume.
    """

    def loss(self, step: StepOutputs) -> ExtraLoss | None:
        return None

    def end_of_epoch(self, epoch: int, epochs: int) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        return None


def _no_options(config: Any) -> dict[str, Any]:
    return {}


def _no_check(config: Any) -> None:
    return None


@dataclass(frozen=True)
class MethodSpec:
    """One base method, declared once.

    Args:
        name: the name ``--method`` and ``TrainConfig.method`` take.
        learner: its prompt learner class; its class attributes ``per_image``,
            ``prompts_images`` and ``class_specific_contexts`` are the method's capabilities.
        summary: one line for ``--help`` and the docs.
        learner_options: the learner's own constructor options from the run's
            ``TrainConfig`` (the common ones — tokenizer, init phrases, class chunks — are
            given by training).
        check: refuses configurations the method cannot run (raises ``InputValueError``).
        options: a frozen dataclass of the method's own options, each field's metadata
            holding its ``help``; given by name in ``TrainConfig.method_options`` and as
            ``--NAME-FIELD`` on the command line (``None``: no options).
        terms: builds the run's :class:`MethodTerms` (``None``: FDBPL's loss alone).
        reference: the method's paper and its authors' code.
    """

    name: str
    learner: type
    summary: str
    learner_options: Callable[[Any], dict[str, Any]] = _no_options
    check: Callable[[Any], None] = _no_check
    options: type | None = None
    terms: Callable[[RunContext], MethodTerms] | None = None
    reference: str = ""
    option_defaults: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name != self.name.lower():
            raise InputValueError(f"name: expected a lower-case identifier, got {self.name!r}")
        if self.options is not None:
            if not dataclasses.is_dataclass(self.options):
                raise InputValueError(f"options: expected a dataclass, got {self.options!r}")
            defaults = {
                f.name: self.options.__dataclass_fields__[f.name].default
                for f in dataclasses.fields(self.options)
            }
            object.__setattr__(self, "option_defaults", defaults)

    @property
    def per_image(self) -> bool:
        """Text features per image (CoCoOp): the losses take ``(N, C, D)``."""
        return bool(getattr(self.learner, "per_image", False))

    @property
    def prompts_images(self) -> bool:
        """The learner prompts the image tower: it needs the images (no stored features),
        and gradients flow through the image tower."""
        return bool(getattr(self.learner, "prompts_images", False))

    @property
    def class_specific(self) -> bool:
        """The learner can learn one context per class (CoOp's CSC)."""
        return bool(getattr(self.learner, "class_specific_contexts", False))

    def parse_options(self, given: Mapping[str, Any] | None) -> Any:
        """The method's options from ``given`` (names of :attr:`options`' fields; missing
        ones take their defaults), or ``None`` for a method without options.

        Raises:
            InputValueError: names the method does not take, or values its dataclass refuses.
        """
        given = dict(given or {})
        if self.options is None:
            if given:
                raise InputValueError(
                    f"method_options: the {self.name} method takes no options, got {sorted(given)}"
                )
            return None
        unknown = sorted(set(given) - set(self.option_defaults))
        if unknown:
            raise InputValueError(
                f"method_options: the {self.name} method takes {sorted(self.option_defaults)}, not {unknown}"
            )
        return self.options(**given)
