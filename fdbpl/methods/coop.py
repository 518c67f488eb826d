"""CoOp (Zhou et al., IJCV 2022): learned context vectors before the class name."""

from __future__ import annotations

from typing import Any

from fdbpl.methods.spec import MethodSpec, random_context_lengths
from fdbpl.prompts.coop import DualPromptLearner


def coop_learner_options(config: Any) -> dict[str, Any]:
    """CoOp's learner options: random contexts' lengths and class-specific contexts."""
    return {"n_ctx": random_context_lengths(config), "class_specific": config.class_specific}


COOP = MethodSpec(
    "coop",
    DualPromptLearner,
    "one learned context per space (or per class), the image tower frozen",
    coop_learner_options,
    reference="Zhou et al., Learning to Prompt for Vision-Language Models, IJCV 2022; KaiyangZhou/CoOp",
)
