"""Stand-in for ``dassl.utils``: checkpoints saved and read as Dassl does (``torch.load``
with torch's default, ``weights_only=True`` on current torch)."""

from __future__ import annotations

import os
import os.path as osp

import torch


def save_checkpoint(state, save_dir, model_name=""):
    os.makedirs(save_dir, exist_ok=True)
    fpath = osp.join(save_dir, model_name or f"model.pth.tar-{state['epoch']}")
    torch.save(state, fpath)
    with open(osp.join(save_dir, "checkpoint"), "w") as f:
        f.write(osp.basename(fpath) + "\n")


def load_checkpoint(path):
    return torch.load(path, map_location="cpu")


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
    with open(osp.join(fdir, "checkpoint")) as f:
        checkpoint = load_checkpoint(osp.join(fdir, f.readline().strip()))
    model.load_state_dict(checkpoint["state_dict"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    return checkpoint["epoch"]
