"""CoCoOp (Zhou et al., CVPR 2022): contexts conditioned on each image by a meta-network."""

from __future__ import annotations

from typing import Any

from fdbpl.methods.spec import MethodSpec, random_context_lengths
from fdbpl.prompts.cocoop import CoCoOpDualPromptLearner


def _learner_options(config: Any) -> dict[str, Any]:
    return {"n_ctx": random_context_lengths(config), "meta_net": config.meta_net}


COCOOP = MethodSpec(
    "cocoop",
    CoCoOpDualPromptLearner,
    "contexts shifted per image by a meta-network, text features per image",
    _learner_options,
    reference="Zhou et al., Conditional Prompt Learning for Vision-Language Models, CVPR 2022; KaiyangZhou/CoOp",
)
