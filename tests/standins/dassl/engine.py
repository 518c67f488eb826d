"""Stand-in for ``dassl.engine``: the trainer registry and ``TrainerX``'s life cycle.

``TrainerX(cfg)`` checks the config, builds the data loaders (an image-folder dataset at
``cfg.DATASET.ROOT``, class names from its folders with ``_`` as a space, a test loader of
``{"img", "label"}`` batches) and the model; ``train()`` runs ``before_epoch``, then
``forward_backward`` on every batch of ``train_loader_x`` (with ``batch_idx`` and
``num_batches`` set), then saves every registered model; ``test()`` returns the top-1
accuracy of ``model_inference`` on the test loader.
"""

from __future__ import annotations

import os
import os.path as osp
from types import SimpleNamespace

import torch


class Registry:
    def __init__(self, name):
        self.name, self._items = name, {}

    def register(self):
        def add(cls):
            self._items[cls.__name__] = cls
            return cls

        return add

    def get(self, name):
        return self._items[name]


TRAINER_REGISTRY = Registry("TRAINER")


class _TestSet(torch.utils.data.Dataset):
    def __init__(self, root, classes, cfg):
        from fdbpl.images import decode_image, preprocess

        self.items = [
            (osp.join(root, c, f), label)
            for label, c in enumerate(classes)
            for f in sorted(os.listdir(osp.join(root, c)))
        ]
        self.decode, self.preprocess, self.cfg = decode_image, preprocess, cfg

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        img = self.preprocess(
            self.decode(path), self.cfg.INPUT.SIZE[0], self.cfg.INPUT.PIXEL_MEAN, self.cfg.INPUT.PIXEL_STD
        )
        return {"img": img, "label": label}


class TrainerX:
    def __init__(self, cfg):
        self.cfg = cfg
        self.device = torch.device("cpu")
        self._models, self._optims, self._scheds = {}, {}, {}
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.check_cfg(cfg)
        self.build_data_loader()
        self.build_model()

    def check_cfg(self, cfg):
        pass

    def build_data_loader(self):
        root = self.cfg.DATASET.ROOT
        folders = sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d)))
        dataset = SimpleNamespace(classnames=[d.replace("_", " ") for d in folders])
        self.dm = SimpleNamespace(dataset=dataset)
        self.num_classes = len(folders)
        self.test_loader = torch.utils.data.DataLoader(_TestSet(root, folders, self.cfg), batch_size=8)
        self.train_loader_x = None  # a trainer replaces it

    def register_model(self, name, model, optim=None, sched=None):
        self._models[name], self._optims[name], self._scheds[name] = model, optim, sched

    def get_model_names(self, names=None):
        return list(self._models) if names is None else names

    def set_model_mode(self, mode="train"):
        for model in self._models.values():
            model.train(mode == "train")

    def model_backward_and_update(self, loss):
        for optim in self._optims.values():
            optim.zero_grad()
        loss.backward()
        for optim in self._optims.values():
            optim.step()

    def update_lr(self):
        for sched in self._scheds.values():
            if sched is not None:
                sched.step()

    def before_epoch(self):
        pass

    def train(self):
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
            self.before_epoch()
            self.set_model_mode("train")
            self.num_batches = len(self.train_loader_x)
            for batch_idx, batch in enumerate(self.train_loader_x):
                self.batch_idx = batch_idx
                self.loss_summary = self.forward_backward(batch)
            self.save_model(self.epoch, self.cfg.OUTPUT_DIR)

    def save_model(self, epoch, directory, model_name="model-best.pth.tar"):
        for name, model in self._models.items():
            os.makedirs(osp.join(directory, name), exist_ok=True)
            torch.save(
                {"state_dict": model.state_dict(), "epoch": epoch + 1}, osp.join(directory, name, model_name)
            )

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, input):
        return self.model(input)

    @torch.no_grad()
    def test(self):
        self.set_model_mode("eval")
        correct = total = 0
        for batch in self.test_loader:
            input, label = self.parse_batch_test(batch)
            correct += int((self.model_inference(input).argmax(1) == label).sum())
            total += len(label)
        return 100.0 * correct / total
