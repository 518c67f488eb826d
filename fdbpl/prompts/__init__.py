"""Dual positive/negative prompts over a frozen CLIP text encoder (Section 3.3), per base method.

:class:`PromptLearnerBase` is what every learner shares (the text pass, checkpoints);
:class:`DualPromptLearner` is CoOp's learner in both spaces, :class:`CoCoOpDualPromptLearner`
CoCoOp's (a meta-network conditions the contexts on each image), :class:`DeepPromptLearner`
the deep vision-language prompts of VPT, IVLP, MaPLe and PromptSRC; :func:`build_learner`
builds any of them behind one interface, and :func:`load_authors_checkpoint` starts one
from a checkpoint saved by the base method's own trainer. Works on open_clip ``CLIP`` and ``CustomTextCLIP``
models and on the OpenAI-``clip`` models that CoOp scripts hold. open_clip is imported
only when its tokenizer is needed.
"""

from fdbpl.errors import UnsupportedModelError
from fdbpl.prompts.authors import AUTHORS_METHODS, load_authors_checkpoint, read_authors_checkpoint
from fdbpl.prompts.base import NEGATIVE_INIT, POSITIVE_INIT, RANDOM_N_CTX, SPACES, PromptLearnerBase
from fdbpl.prompts.build import PromptModel, build_learner, learner_from_state_dict
from fdbpl.prompts.cocoop import META_NETS, CoCoOpDualPromptLearner
from fdbpl.prompts.coop import DualPromptLearner
from fdbpl.prompts.deep import DEEP_DEFAULTS, DEEP_METHODS, DeepPromptLearner
from fdbpl.prompts.text_tower import TextTower
from fdbpl.prompts.vision_tower import VisionTower

__all__ = [
    "AUTHORS_METHODS",
    "DEEP_DEFAULTS",
    "DEEP_METHODS",
    "META_NETS",
    "NEGATIVE_INIT",
    "POSITIVE_INIT",
    "RANDOM_N_CTX",
    "SPACES",
    "CoCoOpDualPromptLearner",
    "DeepPromptLearner",
    "DualPromptLearner",
    "PromptLearnerBase",
    "PromptModel",
    "TextTower",
    "UnsupportedModelError",
    "VisionTower",
    "build_learner",
    "learner_from_state_dict",
    "load_authors_checkpoint",
    "read_authors_checkpoint",
]
