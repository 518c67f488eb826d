"""Stand-in for ``dassl.data``: ``DataManager`` over CoOp's datasets (read by fdbpl.data, which
re-reads CoOp's dataset classes and Dassl's few-shot draw)."""

from __future__ import annotations

import torch

from fdbpl.data import read_dataset
from fdbpl.images import decode_image, preprocess


class _TestSet(torch.utils.data.Dataset):
    def __init__(self, items, cfg):
        self.items, self.cfg = items, cfg

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item, c = self.items[i], self.cfg.INPUT
        img = preprocess(decode_image(item.impath), c.SIZE[0], c.PIXEL_MEAN, c.PIXEL_STD)
        return {"img": img, "label": item.label}


class _Dataset:
    def __init__(self, splits):
        self.train_x, self.val, self.test = splits.train, splits.val, splits.test
        self.classnames = list(splits.classnames)
        self.lab2cname = dict(enumerate(self.classnames))
        self.num_classes = len(self.classnames)


class DataManager:
    def __init__(self, cfg):
        splits = read_dataset(
            cfg.DATASET.NAME,
            cfg.DATASET.ROOT,
            num_shots=max(cfg.DATASET.NUM_SHOTS, 0),
            seed=cfg.SEED,
            subsample=cfg.DATASET.SUBSAMPLE_CLASSES,
        )
        self.dataset = _Dataset(splits)
        print(f"# train_x {len(self.dataset.train_x)}")
        self.train_loader_x = torch.utils.data.DataLoader(_TestSet(splits.train, cfg), batch_size=4)
        self.val_loader = None
        self.test_loader = torch.utils.data.DataLoader(
            _TestSet(splits.test, cfg), batch_size=cfg.DATALOADER.TEST.BATCH_SIZE
        )
        self.num_classes, self.lab2cname = self.dataset.num_classes, self.dataset.lab2cname
