"""FDBPL as a trainer of CoOp's code base (Dassl): copy this file into CoOp's ``trainers/``.

1. ``cp fdbpl_trainer.py CoOp/trainers/`` and ``cp fdbpl.yaml CoOp/configs/trainers/FDBPL/``.
2. In CoOp's ``train.py``: ``import trainers.fdbpl_trainer`` next to the other trainer
   imports, and call ``trainers.fdbpl_trainer.extend_cfg(cfg)`` at the end of its own
   ``extend_cfg(cfg)`` (it adds ``TRAINER.FDBPL``; CoOp's ``TRAINER.COOP`` keys are reused).
3. Build the table once, on the same images (``fdbpl build-cache IMAGES TABLE ...``), and
   train: ``python train.py --trainer FDBPL --config-file configs/trainers/FDBPL/fdbpl.yaml
   ... TRAINER.FDBPL.TABLE TABLE TRAINER.FDBPL.IMAGES IMAGES``.

What it does: CoOp's ``PromptLearner`` + ``TextEncoder`` become fdbpl's
:class:`~fdbpl.prompts.DualPromptLearner` (a positive and a negative space); the training
data are the table's regions (:class:`~fdbpl.cache.RegionDataset`, a new region of every
image each epoch); the loss is :class:`~fdbpl.losses.FDBPLLoss` (Eq. 17). CoOp's own keys
are mapped: ``N_CTX``, ``CTX_INIT``, ``CSC`` and ``CLASS_TOKEN_POSITION`` shape the positive
space (``TRAINER.FDBPL.NEG_CTX_INIT`` / ``NEG_N_CTX`` the negative one), ``PREC`` keeps
``fp16`` / ``fp32`` / ``amp``. Everything but the two contexts is frozen; the schedule steps
once per epoch as in CoOp; ``register_model`` saves both spaces and the class names, so
``load_model`` and Dassl's ``test()`` (positive-space logits) work as for CoOp.

Dassl has no data-parallel training (CoOp wraps the model in ``nn.DataParallel`` at
most); for several GPUs or nodes use ``fdbpl train`` under ``torchrun`` instead.
"""

from __future__ import annotations

import os.path as osp

import torch
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint
from torch import nn

from fdbpl.cache import RegionDataset, RILTable
from fdbpl.images import InputRecipe
from fdbpl.losses import FDBPLLoss
from fdbpl.prompts import DualPromptLearner
from fdbpl.sparsify import SparseSoftLabels

PRECISIONS = ("fp16", "fp32", "amp")


def extend_cfg(cfg) -> None:
    """Add ``TRAINER.FDBPL`` to CoOp's config (call it from ``train.py``'s ``extend_cfg``)."""
    from yacs.config import CfgNode as CN

    cfg.TRAINER.FDBPL = CN()
    cfg.TRAINER.FDBPL.TABLE = ""  # the RIL table (fdbpl build-cache)
    cfg.TRAINER.FDBPL.IMAGES = ""  # the image folder the table was built on
    cfg.TRAINER.FDBPL.NEG_CTX_INIT = "a photo of no"  # "" for random negative contexts
    cfg.TRAINER.FDBPL.NEG_N_CTX = 16  # their length when random
    cfg.TRAINER.FDBPL.CROPS_PER_IMAGE = 1  # regions per image per step
    cfg.TRAINER.FDBPL.LAMBDA_NEG = 1.0  # the weights of Eq. 17
    cfg.TRAINER.FDBPL.LAMBDA_DIFF1 = 1.0
    cfg.TRAINER.FDBPL.LAMBDA_DIFF2 = 1.0
    cfg.TRAINER.FDBPL.ALPHA = 1.0  # Eq. 13
    cfg.TRAINER.FDBPL.DELTA = 0.1  # Eq. 16
    cfg.TRAINER.FDBPL.CLASS_CHUNK_SIZE = 0  # > 0: bound the text pass's memory (many classes)


def load_clip_to_cpu(cfg) -> nn.Module:
    """CoOp's loader: the OpenAI-clip model named by ``MODEL.BACKBONE.NAME``, on the CPU."""
    from clip import clip

    model_path = clip._download(clip._MODELS[cfg.MODEL.BACKBONE.NAME])
    try:
        state_dict = torch.jit.load(model_path, map_location="cpu").eval().state_dict()
    except RuntimeError:
        state_dict = torch.load(model_path, map_location="cpu")
    return clip.build_model(state_dict)


class FDBPLCLIP(nn.Module):
    """The frozen CLIP and the dual prompts; ``forward(image)`` gives the positive logits
    (what Dassl's ``test()`` ranks), :meth:`loss` the FDBPL objective."""

    def __init__(self, clip_model: nn.Module, prompt_learner: DualPromptLearner) -> None:
        super().__init__()
        self.clip = clip_model  # registered: moved with the trainer's model, and frozen below
        self.prompt_learner = prompt_learner

    def image_features(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the image tower is frozen
            return self.clip.encode_image(image.type(self.clip.dtype))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        positive, _ = self.prompt_learner.logits(self.image_features(image))
        return positive


@TRAINER_REGISTRY.register()
class FDBPL(TrainerX):
    """Faster Distillation-Based Prompt Learning on CoOp's trainer (see the module's docs)."""

    def check_cfg(self, cfg) -> None:
        if cfg.TRAINER.COOP.PREC not in PRECISIONS:
            raise ValueError(
                f"TRAINER.COOP.PREC: expected one of {PRECISIONS}, got {cfg.TRAINER.COOP.PREC!r}"
            )
        if not cfg.TRAINER.FDBPL.TABLE or not cfg.TRAINER.FDBPL.IMAGES:
            raise ValueError(
                "TRAINER.FDBPL.TABLE and TRAINER.FDBPL.IMAGES: the RIL table and its image folder"
            )

    def build_data_loader(self) -> None:
        """Dassl's loaders (test, val, class names), with the table's regions as training data."""
        super().build_data_loader()
        cfg = self.cfg
        # CoOp's PromptLearner reads "american_bulldog" as "american bulldog"; so do fdbpl's tables
        self.classnames = [name.replace("_", " ") for name in self.dm.dataset.classnames]
        self.table = RILTable.open(cfg.TRAINER.FDBPL.TABLE, classnames=self.classnames)
        recipe = InputRecipe(cfg.INPUT.SIZE[0], tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD))
        self.train_set = RegionDataset(
            self.table,
            cfg.TRAINER.FDBPL.IMAGES,
            recipe=recipe,
            crops_per_image=cfg.TRAINER.FDBPL.CROPS_PER_IMAGE,
            seed=max(cfg.SEED, 0),
        )
        self.train_loader_x = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
            shuffle=True,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            drop_last=False,
        )

    def before_epoch(self) -> None:
        super().before_epoch()
        self.train_set.set_epoch(self.epoch)  # a new stored region of every image

    def build_model(self) -> None:
        cfg, coop, fdbpl = self.cfg, self.cfg.TRAINER.COOP, self.cfg.TRAINER.FDBPL
        clip_model = load_clip_to_cpu(cfg)
        if coop.PREC in ("fp32", "amp"):
            clip_model.float()  # CoOp: fp16 keeps the half-precision weights
        from clip import clip

        positive_init = coop.CTX_INIT.replace("_", " ") or None
        negative_init = fdbpl.NEG_CTX_INIT.replace("_", " ") or None
        n_ctx = {}
        if positive_init is None:
            n_ctx["positive"] = coop.N_CTX
        if negative_init is None:
            n_ctx["negative"] = fdbpl.NEG_N_CTX
        learner = DualPromptLearner(
            clip_model,
            self.classnames,
            tokenizer=clip.tokenize,
            n_ctx=n_ctx,
            positive_init=positive_init,
            negative_init=negative_init,
            class_specific=coop.CSC,
            class_token_position=coop.CLASS_TOKEN_POSITION,
            class_chunk_size=fdbpl.CLASS_CHUNK_SIZE or None,
        )
        self.model = FDBPLCLIP(clip_model, learner)
        for name, param in self.model.named_parameters():  # only the two contexts learn
            param.requires_grad_(name.startswith("prompt_learner."))
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler("cuda") if coop.PREC == "amp" else None
        self.criterion = FDBPLLoss(
            fdbpl.LAMBDA_NEG, fdbpl.LAMBDA_DIFF1, fdbpl.LAMBDA_DIFF2, fdbpl.ALPHA, fdbpl.DELTA
        )

    def forward_backward(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["region"].ndim == 2:  # several regions per image: (B, n, ...) -> (B * n, ...)
            batch = {k: v.flatten(0, 1) for k, v in batch.items()}
        teacher = SparseSoftLabels.from_batch(batch, self.table.num_classes).to(self.device)
        weight = batch["weight"].to(self.device)
        model = self.model
        scale = model.clip.logit_scale.exp().detach()
        if self.scaler is not None:  # PREC amp, as CoOp
            with torch.autocast(self.device.type):
                out = self._loss(model, batch, teacher, weight, scale)
            self.optim.zero_grad()
            self.scaler.scale(out.total).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            out = self._loss(model, batch, teacher, weight, scale)
            self.model_backward_and_update(out.total)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()  # CoOp steps its schedule once per epoch
        return {name: float(value.detach()) for name, value in out._asdict().items()}

    def _loss(self, model: FDBPLCLIP, batch, teacher, weight, scale):
        if "features" in batch:  # a table built with this student's features
            image_features = batch["features"].to(self.device).float()
        else:
            image_features = model.image_features(batch["image"].to(self.device))
        positive, negative = model.prompt_learner()
        return self.criterion(image_features, positive, negative, teacher, weight, scale)

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Load the prompt learner saved by ``register_model`` (CoOp's file layout); a
        checkpoint of other class names or prompt shapes is refused, naming the difference."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            path = osp.join(directory, name, model_file)
            if not osp.exists(path):
                raise FileNotFoundError(f'Model not found at "{path}"')
            checkpoint = load_checkpoint(path)
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint["epoch"]})')
            self._models[name].load_state_dict(checkpoint["state_dict"])
