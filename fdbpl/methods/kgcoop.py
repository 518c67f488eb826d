"""KgCoOp (Yao et al., CVPR 2023): CoOp's contexts, kept close to the hand-crafted prompt.

FDBPL + KgCoOp trains CoOp's dual prompts with FDBPL's loss plus KgCoOp's knowledge-guided
term on the positive space (the one that classifies; the negative prompts have no
hand-crafted counterpart): :math:`\\lambda (1 - \\frac{1}{C}\\sum_c \\cos(w_c, w^{clip}_c))`,
:math:`w^{clip}_c` the frozen student's text features of the hand-crafted prompt of class
c (:func:`fdbpl.losses.functional.kgcoop_loss`). The hand-crafted prompt is the table
teacher's template unless ``template`` names another (KgCoOp uses CoOp's zero-shot template
of each dataset: build the table with ``--template dataset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fdbpl._checks import check_number
from fdbpl.cache.teacher import check_template
from fdbpl.losses.functional.kgcoop import KGCOOP_WEIGHT
from fdbpl.losses.kgcoop import KgCoOpLoss
from fdbpl.methods.coop import coop_learner_options
from fdbpl.methods.spec import ExtraLoss, MethodSpec, MethodTerms, RunContext, StepOutputs
from fdbpl.prompts.coop import DualPromptLearner
from fdbpl.prompts.ensemble import template_ensemble

__all__ = ["KGCOOP", "KgCoOpOptions", "KgCoOpTerms"]


@dataclass(frozen=True)
class KgCoOpOptions:
    """KgCoOp's own options."""

    weight: float = field(
        default=KGCOOP_WEIGHT,
        metadata={
            "help": f"lambda, the knowledge-guided term's weight (default: {KGCOOP_WEIGHT:g}, KgCoOp's)"
        },
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "the hand-crafted prompt, {} for the class name (default: the table teacher's template)"
        },
    )

    def __post_init__(self) -> None:
        check_number("weight", self.weight, minimum=0.0)
        if self.template is not None:
            check_template(self.template)


class KgCoOpTerms(MethodTerms):
    """The knowledge-guided term on the positive space's text features."""

    def __init__(self, run: RunContext) -> None:
        options: KgCoOpOptions = run.options
        template = options.template if options.template is not None else run.template
        with torch.no_grad():
            # the table's names, as the learner takes them (normalised when the table was built)
            self.handcrafted = template_ensemble(
                run.student,
                list(run.classnames),
                [template],
                tokenizer=run.tokenizer,
                normalize_classnames=False,
            ).to(run.device)
        self.loss_fn = KgCoOpLoss(options.weight)

    def loss(self, step: StepOutputs) -> ExtraLoss:
        handcrafted = (
            self.handcrafted if step.classes is None else self.handcrafted.index_select(0, step.classes)
        )
        term = self.loss_fn(step.positive, handcrafted)
        return ExtraLoss(term, {"kg": term})


KGCOOP = MethodSpec(
    "kgcoop",
    DualPromptLearner,
    "CoOp's contexts kept close to the hand-crafted prompt's text features",
    coop_learner_options,
    options=KgCoOpOptions,
    terms=KgCoOpTerms,
    reference="Yao et al., Visual-Language Prompt Tuning with Knowledge-guided Context Optimization, CVPR 2023; "
    "htyao89/KgCoOp",
)
