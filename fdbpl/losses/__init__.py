"""The FDBPL losses: information weight (Eq. 6), RADP (Eq. 9-10), PCD (Eq. 11-16), total (Eq. 17);
PromptSRC's self-regulating constraints and KgCoOp's knowledge-guided term, for the
``promptsrc`` and ``kgcoop`` base methods.

Every module here holds hyper-parameters only; its ``forward`` is one call to the
function of the same name in :mod:`fdbpl.losses.functional`. This subpackage imports
neither open_clip nor torchvision.
"""

from fdbpl.losses.functional import FDBPLLossOutput, information_weight
from fdbpl.losses.kgcoop import KgCoOpLoss
from fdbpl.losses.pcd import FirstOrderDifferenceLoss, PCDLoss, SecondOrderDifferenceLoss
from fdbpl.losses.promptsrc import PromptSRCLoss
from fdbpl.losses.radp import NegativeUniformLoss, PositiveDistillationLoss, RADPLoss
from fdbpl.losses.total import FDBPLLoss
from fdbpl.losses.weights import DEFAULT_WEIGHTS, LossWeights

__all__ = [
    "DEFAULT_WEIGHTS",
    "FDBPLLoss",
    "FDBPLLossOutput",
    "FirstOrderDifferenceLoss",
    "KgCoOpLoss",
    "LossWeights",
    "NegativeUniformLoss",
    "PCDLoss",
    "PositiveDistillationLoss",
    "PromptSRCLoss",
    "RADPLoss",
    "SecondOrderDifferenceLoss",
    "information_weight",
]
