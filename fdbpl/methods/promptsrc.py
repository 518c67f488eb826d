"""PromptSRC (Khattak et al., ICCV 2023): IVLP's deep prompts, regulated by the frozen
model (its three self-regulating constraints) and averaged over epochs (Gaussian prompt
aggregation)."""

from __future__ import annotations

import torch

from fdbpl.aggregation import GaussianPromptAggregation
from fdbpl.logits import clip_logits
from fdbpl.losses.promptsrc import PromptSRCLoss
from fdbpl.methods.deep import deep_learner_options
from fdbpl.methods.spec import ExtraLoss, MethodSpec, MethodTerms, RunContext, StepOutputs
from fdbpl.prompts.deep import DeepPromptLearner
from fdbpl.prompts.ensemble import template_ensemble


class PromptSRCTerms(MethodTerms):
    """PromptSRC's constraints on the positive space (the one that classifies; the negative
    prompts have no hand-written counterpart to stay close to), and its prompt averaging."""

    def __init__(self, run: RunContext) -> None:
        cfg = run.config
        self.student, self.logit_scale = run.student, run.logit_scale
        # the table's names, as the learner takes them (normalised when the table was built)
        self.ensemble = template_ensemble(
            run.student, list(run.classnames), tokenizer=run.tokenizer, normalize_classnames=False
        ).to(run.device)
        self.loss_fn = PromptSRCLoss(cfg.src_image_weight, cfg.src_text_weight, cfg.src_logit_weight)
        self.gpa = GaussianPromptAggregation(run.learner, cfg.epochs, cfg.gpa_mean, cfg.gpa_std)

    def loss(self, step: StepOutputs) -> ExtraLoss | None:
        if step.images is None:
            return None
        ensemble = self.ensemble if step.classes is None else self.ensemble.index_select(0, step.classes)
        with torch.no_grad():
            frozen = self.student.encode_image(step.images).float()
            frozen_logits = clip_logits(frozen, ensemble, self.logit_scale)
        logits = clip_logits(step.image_features, step.positive, self.logit_scale)
        src = self.loss_fn(step.image_features, frozen, step.positive, ensemble, logits, frozen_logits)
        return ExtraLoss(src.total, {"src_image": src.image, "src_text": src.text, "src_logits": src.logits})

    def end_of_epoch(self, epoch: int, epochs: int) -> None:
        self.gpa.update(epoch)
        if epoch + 1 == epochs:  # the run's prompts are the Gaussian-weighted average
            self.gpa.apply()

    def state_dict(self) -> dict[str, object]:
        return {"gpa": self.gpa.state_dict()}

    def load_state_dict(self, checkpoint) -> None:  # type: ignore[no-untyped-def]
        if "gpa" in checkpoint:
            self.gpa.load_state_dict(checkpoint["gpa"])


PROMPTSRC = MethodSpec(
    "promptsrc",
    DeepPromptLearner,
    "IVLP's prompts with self-regulating constraints and Gaussian prompt aggregation",
    deep_learner_options,
    terms=PromptSRCTerms,
    reference="Khattak et al., Self-regulating Prompts, ICCV 2023; muzairkhattak/PromptSRC",
)
