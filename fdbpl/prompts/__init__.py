"""Dual positive/negative prompts over a frozen CLIP text encoder (Section 3.3), per base method.

:class:`DualPromptLearner` is CoOp's learner in both spaces, :class:`CoCoOpDualPromptLearner`
CoCoOp's (a meta-network conditions the contexts on each image); :func:`build_learner`
builds either behind one interface. Works on open_clip ``CLIP`` and ``CustomTextCLIP``
models and on the OpenAI-``clip`` models that CoOp scripts hold. open_clip is imported
only when its tokenizer is needed.
"""

from fdbpl.prompts.build import LEARNERS, METHODS, PromptModel, build_learner, learner_from_state_dict
from fdbpl.prompts.cocoop import META_NETS, CoCoOpDualPromptLearner
from fdbpl.prompts.learner import SPACES, DualPromptLearner
from fdbpl.prompts.text_tower import TextTower, UnsupportedModelError

__all__ = [
    "LEARNERS",
    "META_NETS",
    "METHODS",
    "SPACES",
    "CoCoOpDualPromptLearner",
    "DualPromptLearner",
    "PromptModel",
    "TextTower",
    "UnsupportedModelError",
    "build_learner",
    "learner_from_state_dict",
]
