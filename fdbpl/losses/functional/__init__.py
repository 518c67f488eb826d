"""The functional form of every fdbpl loss: pure functions of tensors, no state.

Each :mod:`fdbpl.losses` module's ``forward`` is one call to a function here, in the
module of the same name (``radp``, ``pcd``, ``total``). :func:`clip_logits` and the
information weight live in :mod:`fdbpl.logits` and :mod:`fdbpl.sparsify` and are
exported here too.
"""

from fdbpl.logits import CLIP_LOGIT_SCALE, NORM_EPS, clip_logits
from fdbpl.losses.functional.kgcoop import kgcoop_loss
from fdbpl.losses.functional.pcd import (
    RESOLUTION,
    first_order_difference_loss,
    pcd_loss,
    second_order_difference_loss,
)
from fdbpl.losses.functional.promptsrc import (
    PromptSRCLossOutput,
    feature_consistency_loss,
    logit_consistency_loss,
    promptsrc_loss,
)
from fdbpl.losses.functional.radp import negative_uniform_loss, positive_distillation_loss, radp_loss
from fdbpl.losses.functional.reduction import Reduction
from fdbpl.losses.functional.total import FDBPLLossOutput, fdbpl_loss
from fdbpl.sparsify import information_weight

__all__ = [
    "CLIP_LOGIT_SCALE",
    "NORM_EPS",
    "RESOLUTION",
    "FDBPLLossOutput",
    "PromptSRCLossOutput",
    "Reduction",
    "clip_logits",
    "fdbpl_loss",
    "feature_consistency_loss",
    "first_order_difference_loss",
    "information_weight",
    "kgcoop_loss",
    "logit_consistency_loss",
    "negative_uniform_loss",
    "pcd_loss",
    "positive_distillation_loss",
    "promptsrc_loss",
    "radp_loss",
    "second_order_difference_loss",
]
