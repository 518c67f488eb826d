"""fdbpl.schedules.epoch_schedule against a literal re-reading of Dassl's build_lr_scheduler: its
warm-up wrapper (a constant or linear rate while its own epoch count is below WARMUP_EPOCH, then
the wrapped torch scheduler, stepped from there on) around torch's own CosineAnnealingLR,
StepLR or MultiStepLR, as dassl/optim/lr_scheduler.py builds them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.errors import InputValueError
from fdbpl.schedules import epoch_schedule

pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")


class DasslWarmup:
    """Dassl's _BaseWarmupScheduler stepping (WARMUP_RECOUNT = True)."""

    def __init__(self, optimizer, successor, warmup_epoch, kind, warm_lr):
        self.optimizer, self.successor, self.w, self.kind, self.warm_lr = (
            optimizer, successor, warmup_epoch, kind, warm_lr
        )  # fmt: skip
        self.base = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self):
        if self.last_epoch >= self.w:
            lrs = self.successor.get_last_lr()
        elif self.kind == "constant" or self.last_epoch == 0:
            lrs = [self.warm_lr for _ in self.base]
        else:
            lrs = [b * self.last_epoch / self.w for b in self.base]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    def step(self):
        if self.last_epoch >= self.w:
            self.successor.step()
        else:
            self.last_epoch += 1
            self._apply()


def dassl_rates(name, lrs, max_epoch, warmup, kind, warm_lr, stepsize, gamma):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    if name == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(max_epoch))
    elif name == "single_step":
        step = stepsize[-1] if stepsize[-1] > 0 else max_epoch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=gamma)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    if warmup > 0:
        scheduler = DasslWarmup(optimizer, scheduler, warmup, kind, warm_lr)
    rates = []
    for _ in range(max_epoch):
        rates.append([g["lr"] for g in optimizer.param_groups])
        scheduler.step()
    return rates


def fdbpl_rates(name, lrs, max_epoch, warmup, kind, warm_lr, stepsize, gamma):
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)])
    schedule = epoch_schedule(
        optimizer, max_epoch, name=name, warmup_epochs=warmup, warmup_type=kind, warmup_lr=warm_lr,
        stepsize=stepsize, gamma=gamma,
    )  # fmt: skip
    rates = []
    for _ in range(max_epoch):
        rates.append([g["lr"] for g in optimizer.param_groups])
        schedule.step()
    return rates


@given(
    name=st.sampled_from(["cosine", "single_step", "multi_step"]),
    lrs=st.lists(st.floats(1e-4, 10.0), min_size=1, max_size=2),
    max_epoch=st.integers(1, 60),
    warmup=st.integers(-1, 6),
    kind=st.sampled_from(["constant", "linear"]),
    warm_lr=st.floats(1e-6, 1e-2),
    steps=st.lists(st.integers(1, 60), min_size=1, max_size=3, unique=True),
    gamma=st.floats(0.05, 0.9),
)
def test_every_epochs_rate_is_dassls(name, lrs, max_epoch, warmup, kind, warm_lr, steps, gamma):
    stepsize = sorted(steps) if name == "multi_step" else steps[:1]
    args = (name, lrs, max_epoch, warmup, kind, warm_lr, stepsize, gamma)
    want, got = dassl_rates(*args), fdbpl_rates(*args)
    for epoch, (a, b) in enumerate(zip(want, got)):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-15), f"epoch {epoch}"


def test_the_state_is_plain_data_and_restores(tmp_path):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    schedule = epoch_schedule(optimizer, 10, warmup_epochs=1)
    for _ in range(4):
        schedule.step()
    torch.save(schedule.state_dict(), tmp_path / "s.pt")
    fresh = epoch_schedule(torch.optim.SGD([param], lr=0.1), 10, warmup_epochs=1)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    fresh.step()
    schedule.step()
    assert fresh.get_last_lr() == schedule.get_last_lr()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="exp"), "name: expected one of"),
        (dict(warmup_type="cosine"), "warmup_type: expected one of"),
        (dict(max_epoch=0), "max_epoch: expected a positive integer"),
        (dict(stepsize=(1.5,)), "stepsize: expected integers"),
        (dict(lr=0.0), "the base learning rate must be positive"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=kwargs.pop("lr", 0.1))
    with pytest.raises(InputValueError, match=match):
        epoch_schedule(optimizer, kwargs.pop("max_epoch", 5), **kwargs)
