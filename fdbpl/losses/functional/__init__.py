"""The functional form of every fdbpl loss: pure functions of tensors, no state.

Each :mod:`fdbpl.losses` module's ``forward`` is one call to a function here.
"""

from fdbpl.losses.functional.information import information_weight
from fdbpl.losses.functional.pcd import (
    EXACT_NEIGHBOURS,
    NORM_EPS,
    RESOLUTION,
    first_order_difference_loss,
    second_order_difference_loss,
)
from fdbpl.losses.functional.radp import (
    Reduction,
    negative_uniform_loss,
    positive_distillation_loss,
)
from fdbpl.losses.functional.total import (
    CLIP_LOGIT_SCALE,
    FDBPLLossOutput,
    clip_logits,
    fdbpl_loss,
    pcd_loss,
    radp_loss,
)

__all__ = [
    "CLIP_LOGIT_SCALE",
    "EXACT_NEIGHBOURS",
    "NORM_EPS",
    "RESOLUTION",
    "FDBPLLossOutput",
    "Reduction",
    "clip_logits",
    "fdbpl_loss",
    "first_order_difference_loss",
    "information_weight",
    "negative_uniform_loss",
    "pcd_loss",
    "positive_distillation_loss",
    "radp_loss",
    "second_order_difference_loss",
]
