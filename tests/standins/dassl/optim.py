"""Stand-in for ``dassl.optim``: ``build_optimizer`` (SGD or Adam as ``OPTIM`` names them), and
``build_lr_scheduler`` failing as Dassl's does on current torch (its warm-up classes pass
``verbose`` positionally), so that a trainer calling it shows up in the tests."""

from __future__ import annotations

import torch


def build_optimizer(model, optim_cfg):
    params = [p for p in model.parameters()]
    if optim_cfg.NAME == "sgd":
        return torch.optim.SGD(
            params, lr=optim_cfg.LR, momentum=optim_cfg.MOMENTUM, weight_decay=optim_cfg.WEIGHT_DECAY
        )
    return torch.optim.Adam(params, lr=optim_cfg.LR, weight_decay=optim_cfg.WEIGHT_DECAY)


def build_lr_scheduler(optimizer, optim_cfg):
    raise TypeError("LRScheduler.__init__() takes from 2 to 3 positional arguments but 4 were given")
