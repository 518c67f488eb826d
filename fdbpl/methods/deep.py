"""The deep vision-language prompts of VPT, IVLP and MaPLe (multimodal-prompt-learning)."""

from __future__ import annotations

from typing import Any

from fdbpl.methods.spec import MethodSpec
from fdbpl.prompts.deep import DeepPromptLearner

_REFERENCE = "Khattak et al., MaPLe, CVPR 2023; muzairkhattak/multimodal-prompt-learning"


def deep_learner_options(config: Any) -> dict[str, Any]:
    """The deep learners' options: depth and prompt lengths (``None``: the method's own,
    :data:`~fdbpl.prompts.DEEP_DEFAULTS`; the text length falls back to ``n_ctx``)."""
    return {
        "depth": config.depth,
        "text_ctx": config.text_ctx if config.text_ctx is not None else config.n_ctx,
        "vision_ctx": config.vision_ctx,
        "gradient_checkpointing": config.gradient_checkpointing,
    }


VPT = MethodSpec(
    "vpt",
    DeepPromptLearner,
    "deep vision prompts, each space's text a fixed phrase",
    deep_learner_options,
    reference=_REFERENCE,
)
IVLP = MethodSpec(
    "ivlp",
    DeepPromptLearner,
    "independent deep text and vision prompts",
    deep_learner_options,
    reference=_REFERENCE,
)
MAPLE = MethodSpec(
    "maple",
    DeepPromptLearner,
    "deep text prompts, the vision prompts projected from them",
    deep_learner_options,
    reference=_REFERENCE,
)
