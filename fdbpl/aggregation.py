r"""PromptSRC's Gaussian-weighted prompt aggregation (GPA) over the epochs of a run.

PromptSRC (Khattak et al., ICCV 2023) does not keep the prompts of the last epoch: it
keeps their average over the epochs, weighted by a Gaussian over the epoch number,

.. math::

    P = \sum_{e=1}^{E} w_e P_e, \qquad
    w_e = \frac{\exp(-(e - \mu)^2 / 2\sigma^2)}{\sum_{e'=1}^{E} \exp(-(e' - \mu)^2 / 2\sigma^2)},

with :math:`P_e` the prompts after epoch :math:`e`; its base-to-new configs use
:math:`\mu = 15`, :math:`\sigma = 1` over :math:`E = 20` epochs. The weights are normalised
over the run's own epochs (computed in the log domain, so a :math:`\mu` far from them still
gives weights that sum to 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fdbpl._checks import check_count, check_number
from fdbpl.errors import InputValueError

__all__ = ["GPA_MEAN", "GPA_STD", "GaussianPromptAggregation", "gaussian_epoch_weights"]

#: PromptSRC's base-to-new ``GPA_MEAN`` and ``GPA_STD``.
GPA_MEAN, GPA_STD = 15.0, 1.0


def gaussian_epoch_weights(epochs: int, mean: float = GPA_MEAN, std: float = GPA_STD) -> torch.Tensor:
    """:math:`(E,)` float64 weights :math:`w_1 .. w_E` (epochs counted from 1), summing to 1."""
    check_count("epochs", epochs)
    check_number("mean", mean)
    check_number("std", std, positive=True)
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    return torch.softmax(-((e - mean) ** 2) / (2 * std**2), dim=0)


class GaussianPromptAggregation:
    """The running Gaussian-weighted sum of a module's trainable parameters, epoch by epoch.

    Call :meth:`update` after each epoch (with its 0-based index) and :meth:`apply` after
    the last one: the module's trainable parameters become the weighted sum. The sums are
    float64; :meth:`state_dict` / :meth:`load_state_dict` carry them across a resume.

    Args:
        module: the prompt learner (its parameters with ``requires_grad`` are aggregated).
        epochs: E, the run's number of epochs.
        mean, std: :math:`\\mu` and :math:`\\sigma` of the Gaussian over epochs 1..E.

    Example:
        >>> import torch
        >>> from fdbpl.aggregation import GaussianPromptAggregation
        >>> prompt = torch.nn.Linear(1, 1, bias=False)
        >>> gpa = GaussianPromptAggregation(prompt, epochs=3, mean=2.0, std=1e-3)
        >>> for epoch in range(3):
        ...     _ = prompt.weight.data.fill_(epoch + 1.0)  # the prompts after each epoch
        ...     gpa.update(epoch)
        >>> gpa.apply(); prompt.weight.item()  # all the weight on epoch 2
        2.0
    """

    def __init__(self, module: nn.Module, epochs: int, mean: float = GPA_MEAN, std: float = GPA_STD) -> None:
        self.weights = gaussian_epoch_weights(epochs, mean, std)
        self.params = {name: p for name, p in module.named_parameters() if p.requires_grad}
        self.sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in self.params.items()}
        self.seen: list[int] = []

    @torch.no_grad()
    def update(self, epoch: int) -> None:
        """Add the parameters after epoch ``epoch`` (0-based), with that epoch's weight."""
        if not 0 <= epoch < len(self.weights) or epoch in self.seen:
            raise InputValueError(
                f"epoch: expected a new epoch in [0, {len(self.weights)}), got {epoch} (seen: {self.seen})"
            )
        w = float(self.weights[epoch])
        for name, p in self.params.items():
            self.sums[name].add_(p.detach().double(), alpha=w)
        self.seen.append(epoch)

    @torch.no_grad()
    def apply(self) -> None:
        """Set the parameters to the aggregate (every epoch must have been added)."""
        missing = sorted(set(range(len(self.weights))) - set(self.seen))
        if missing:
            raise InputValueError(f"GaussianPromptAggregation: epochs {missing[:10]} were not added")
        for name, p in self.params.items():
            p.copy_(self.sums[name].to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.clone() for k, v in self.sums.items()}, "seen": list(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums = state.get("sums", {})
        if set(sums) != set(self.sums) or any(sums[k].shape != v.shape for k, v in self.sums.items()):
            raise InputValueError("GaussianPromptAggregation: the saved sums are of other parameters")
        self.sums = {k: v.to(self.sums[k]).clone() for k, v in sums.items()}
        self.seen = [int(e) for e in state.get("seen", [])]
