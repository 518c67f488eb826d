"""Stand-in for ``dassl.optim``: SGD and a cosine schedule over ``MAX_EPOCH`` epochs."""

from __future__ import annotations

import torch


def build_optimizer(model, optim_cfg):
    return torch.optim.SGD(model.parameters(), lr=optim_cfg.LR, momentum=0.9, weight_decay=5e-4)


def build_lr_scheduler(optimizer, optim_cfg):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=optim_cfg.MAX_EPOCH)
