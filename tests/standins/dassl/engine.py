"""Stand-in for ``dassl.engine``: the trainer registry and ``TrainerX``'s life cycle, as Dassl's
``SimpleTrainer`` / ``TrainerX`` run it.

``TrainerX(cfg)`` checks the config, builds the data (``DataManager``) and the model.
``train()``: ``before_train`` (resume from the output folder's last checkpoint), then per epoch
``before_epoch``, ``forward_backward`` on every batch of ``train_loader_x`` (``batch_idx`` and
``num_batches`` set), ``after_epoch`` (save ``model.pth.tar-N`` at the last epoch and every
``CHECKPOINT_FREQ``), then ``after_train`` (``test()`` unless ``TEST.NO_TEST``). ``test()``
prints and returns the top-1 accuracy of ``model_inference`` on the test loader.
"""

from __future__ import annotations

import os.path as osp

import torch

from dassl.data import DataManager
from dassl.utils import resume_from_checkpoint, save_checkpoint


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


def build_trainer(cfg):
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)


class TrainerX:
    def __init__(self, cfg):
        self._models, self._optims, self._scheds = {}, {}, {}
        self.check_cfg(cfg)
        self.device = torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        self.build_data_loader()
        self.build_model()

    def check_cfg(self, cfg):
        pass

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x, self.val_loader, self.test_loader = (
            dm.train_loader_x,
            dm.val_loader,
            dm.test_loader,
        )
        self.num_classes, self.lab2cname, self.dm = dm.num_classes, dm.lab2cname, dm

    def register_model(self, name, model, optim=None, sched=None):
        self._models[name], self._optims[name], self._scheds[name] = model, optim, sched

    def get_model_names(self, names=None):
        return list(self._models) if names is None else names

    def save_model(self, epoch, directory, model_name=""):
        for name, model in self._models.items():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                "state_dict": model.state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": None,
            }
            save_checkpoint(state, osp.join(directory, name), model_name=model_name)

    def resume_model_if_exist(self, directory):
        names = self.get_model_names()
        if not all(osp.exists(osp.join(directory, name, "checkpoint")) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        for name in names:
            start = resume_from_checkpoint(
                osp.join(directory, name), self._models[name], self._optims[name], self._scheds[name]
            )
        return start

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

    def before_train(self):
        self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME or self.output_dir)

    def before_epoch(self):
        pass

    def run_epoch(self):
        self.set_model_mode("train")
        self.num_batches = len(self.train_loader_x)
        for batch_idx, batch in enumerate(self.train_loader_x):
            self.batch_idx = batch_idx
            self.loss_summary = self.forward_backward(batch)

    def after_epoch(self):
        last = self.epoch + 1 == self.max_epoch
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        if last or (freq > 0 and (self.epoch + 1) % freq == 0):
            self.save_model(self.epoch, self.output_dir)

    def after_train(self):
        if not self.cfg.TEST.NO_TEST:
            self.test()

    def train(self):
        self.before_train()
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

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
        accuracy = 100.0 * correct / total
        print(f"* accuracy: {accuracy:.4f}%")
        return accuracy
