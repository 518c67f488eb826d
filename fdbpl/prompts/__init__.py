"""Dual positive/negative CoOp-style prompts over a frozen CLIP text encoder (Section 3.3).

Works on open_clip ``CLIP`` and ``CustomTextCLIP`` models and on the OpenAI-``clip``
models that CoOp scripts hold. open_clip is imported only when its tokenizer is needed.
"""

from fdbpl.prompts.learner import SPACES, DualPromptLearner
from fdbpl.prompts.text_tower import TextTower, UnsupportedModelError

__all__ = ["SPACES", "DualPromptLearner", "TextTower", "UnsupportedModelError"]
