"""Per-epoch learning-rate schedules as Dassl (CoOp's trainer engine) steps them.

Dassl's ``build_lr_scheduler`` wraps its schedule in warm-up classes that keep the wrapped
scheduler object in their state, which ``torch.load(weights_only=True)`` refuses, and on
current torch its warm-up classes no longer construct. :func:`epoch_schedule` gives the
same learning rate at every epoch as one :class:`~torch.optim.lr_scheduler.LambdaLR`,
whose state is plain numbers.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import torch

from fdbpl.errors import InputValueError

__all__ = ["SCHEDULES", "WARMUPS", "epoch_schedule"]

#: Dassl's ``OPTIM.LR_SCHEDULER`` values.
SCHEDULES = ("cosine", "single_step", "multi_step")
#: Dassl's ``OPTIM.WARMUP_TYPE`` values.
WARMUPS = ("constant", "linear")


def _main_factor(name: str, max_epoch: int, stepsize: Sequence[int], gamma: float) -> Callable[[int], float]:
    if name == "cosine":
        return lambda k: (1 + math.cos(math.pi * k / max_epoch)) / 2
    if name == "single_step":
        step = stepsize[-1] if stepsize[-1] > 0 else max_epoch
        return lambda k: gamma ** (k // step)
    milestones = sorted(stepsize)
    return lambda k: gamma ** bisect.bisect_right(milestones, k)


def epoch_schedule(
    optimizer: torch.optim.Optimizer,
    max_epoch: int,
    *,
    name: str = "cosine",
    warmup_epochs: int = 0,
    warmup_type: str = "constant",
    warmup_lr: float = 1e-5,
    stepsize: Sequence[int] = (-1,),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Dassl's schedule (``OPTIM.LR_SCHEDULER`` and its warm-up), stepped once per epoch.

    With ``warmup_epochs`` W > 0 the first W epochs run at ``warmup_lr`` (``constant``:
    Dassl's ``WARMUP_CONS_LR``) or ramp linearly (``linear``: ``warmup_lr`` at epoch 0, then
    ``lr * e / W``; Dassl's ``WARMUP_MIN_LR``), and epoch W + k runs at the main schedule's
    epoch k (Dassl's ``WARMUP_RECOUNT``): cosine ``lr * (1 + cos(pi k / max_epoch)) / 2``,
    ``single_step`` ``lr * gamma ** (k // stepsize)``, ``multi_step`` ``lr * gamma ** (number
    of milestones <= k)``.

    Args:
        optimizer: its learning rate is the schedule's base (Dassl's ``OPTIM.LR``).
        max_epoch: Dassl's ``OPTIM.MAX_EPOCH``.
        name: one of :data:`SCHEDULES`.
        warmup_epochs: Dassl's ``OPTIM.WARMUP_EPOCH`` (<= 0: none).
        warmup_type: one of :data:`WARMUPS`.
        warmup_lr: the warm-up's constant or starting learning rate.
        stepsize: Dassl's ``OPTIM.STEPSIZE`` (single_step takes the last; <= 0: max_epoch).
        gamma: Dassl's ``OPTIM.GAMMA``.

    Raises:
        InputValueError: an unknown schedule or warm-up, or a non-positive base rate or
            ``max_epoch``.
    """
    if name not in SCHEDULES:
        raise InputValueError(f"name: expected one of {list(SCHEDULES)}, got {name!r}")
    if warmup_type not in WARMUPS:
        raise InputValueError(f"warmup_type: expected one of {list(WARMUPS)}, got {warmup_type!r}")
    if isinstance(max_epoch, bool) or not isinstance(max_epoch, int) or max_epoch < 1:
        raise InputValueError(f"max_epoch: expected a positive integer, got {max_epoch!r}")
    stepsize = list(stepsize) if isinstance(stepsize, (list, tuple)) else [stepsize]
    if not stepsize or not all(isinstance(s, int) for s in stepsize):
        raise InputValueError(f"stepsize: expected integers, got {stepsize!r}")
    base = [group["lr"] for group in optimizer.param_groups]
    if not all(lr > 0 for lr in base):
        raise InputValueError(f"optimizer: the base learning rate must be positive, got {base}")
    main = _main_factor(name, max_epoch, stepsize, gamma)
    w = max(int(warmup_epochs), 0)

    def factors(lr: float) -> Callable[[int], float]:
        def factor(epoch: int) -> float:
            if epoch >= w:
                return main(epoch - w)
            if warmup_type == "constant" or epoch == 0:
                return warmup_lr / lr
            return epoch / w

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factors(lr) for lr in base])
