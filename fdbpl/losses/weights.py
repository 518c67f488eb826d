r"""The loss weights of Eq. 17 and the hyper-parameters of Eq. 13 and 16, as one value.

:data:`DEFAULT_WEIGHTS` is where every default is written: the loss functions, the loss
modules, :class:`~fdbpl.train.TrainConfig`, the command line and the Dassl trainer all
read their defaults from it. The paper gives no values; the defaults weigh every part of
Eq. 17 equally, with :math:`\alpha = 1` and :math:`\delta = 0.1`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from fdbpl.options import check_settings, setting

__all__ = ["DEFAULT_WEIGHTS", "LossWeights"]


@dataclass(frozen=True)
class LossWeights:
    r"""FDBPL's loss weights.

    Args:
        lambda_neg: :math:`\lambda_{neg}`, the negative term's weight (Eq. 17).
        lambda_diff1: :math:`\lambda_{diff1}`, the first-order difference's (Eq. 17).
        lambda_diff2: :math:`\lambda_{diff2}`, the second-order difference's (Eq. 17).
        alpha: :math:`\alpha` of the first-order difference (Eq. 13), :math:`\ge 0`.
        delta: :math:`\delta` of the second-order difference (Eq. 16).

    Raises:
        InputValueError: a weight that is not a finite number (named), or a negative
            :math:`\lambda` or :math:`\alpha`.

    Example:
        >>> from fdbpl.losses import FDBPLLoss, LossWeights
        >>> weights = LossWeights(lambda_neg=0.5)
        >>> FDBPLLoss(**weights.as_kwargs()).lambda_neg
        0.5
    """

    lambda_neg: float = setting(1.0, "weight of the negative term (Eq. 10) in Eq. 17", minimum=0.0)
    lambda_diff1: float = setting(1.0, "weight of the first-order difference (Eq. 13) in Eq. 17", minimum=0.0)
    lambda_diff2: float = setting(
        1.0, "weight of the second-order difference (Eq. 16) in Eq. 17", minimum=0.0
    )
    alpha: float = setting(1.0, "alpha of the first-order difference (Eq. 13)", minimum=0.0)
    delta: float = setting(0.1, "delta of the second-order difference (Eq. 16)")

    def __post_init__(self) -> None:
        check_settings(self)

    def as_kwargs(self) -> dict[str, Any]:
        """The weights by name, for ``FDBPLLoss(**weights.as_kwargs())`` or :func:`fdbpl_loss`."""
        return asdict(self)


#: The defaults of every loss function, module and training entry point.
DEFAULT_WEIGHTS = LossWeights()
