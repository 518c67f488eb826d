"""FDBPL as a trainer of CoOp's code base (Dassl): copy this file into CoOp's ``trainers/``.

1. ``cp fdbpl_trainer.py CoOp/trainers/``, ``cp fdbpl.yaml CoOp/configs/trainers/FDBPL/`` and
   ``cp scripts/*.sh CoOp/scripts/fdbpl/``.
2. In CoOp's ``train.py``, as the last line of its ``extend_cfg(cfg)``:
   ``import trainers.fdbpl_trainer; trainers.fdbpl_trainer.extend_cfg(cfg)`` (it registers the
   trainer and adds ``TRAINER.FDBPL``; CoOp's ``TRAINER.COOP`` keys are reused).
3. Run ``scripts/fdbpl/base2new_train.sh DATASET SEED`` then ``base2new_test.sh DATASET SEED``.

The training set is Dassl's own ``train_x`` (CoOp's few-shot draw for this seed, shots and
class subset). Before the first epoch the trainer builds the RIL table of exactly those
images with the teacher of ``TRAINER.FDBPL.TEACHER`` into ``TRAINER.FDBPL.TABLES_DIR``, one
folder per draw (reused by the next run of the same draw; a killed build resumes), or, given
``TRAINER.FDBPL.TABLE``, checks that the table holds exactly those images and class names and
refuses it otherwise. ``--eval-only`` needs no table: shared contexts load for any class list
(CoOp's ``SUBSAMPLE_CLASSES new``, another dataset), class-specific ones for their own classes.

What it trains: CoOp's ``PromptLearner`` + ``TextEncoder`` become fdbpl's
:class:`~fdbpl.prompts.DualPromptLearner` (a positive and a negative space); the data are the
table's regions (:class:`~fdbpl.cache.RegionDataset`, a new region of every image each
epoch); the loss is :class:`~fdbpl.losses.FDBPLLoss` (Eq. 17). The schedule is Dassl's
(``OPTIM.LR_SCHEDULER`` and its warm-up, :func:`fdbpl.schedules.epoch_schedule`), stepped
once per epoch; checkpoints hold plain tensors and numbers, so ``torch.load(weights_only=True)``
reads them. Dassl has no data-parallel training: for several GPUs use ``fdbpl train`` under
``torchrun``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import os.path as osp
import re
import warnings
from typing import Any

import torch
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_optimizer
from torch import nn

from fdbpl.cache import RegionDataset, RILTable, build_table, clip_teacher
from fdbpl.cache.build import BUILD_DEFAULTS
from fdbpl.cache.provenance import check_table_draw, describe_source
from fdbpl.cache.scan import scan_image_list
from fdbpl.cache.teacher import TEACHER_TEMPLATE
from fdbpl.data import coop_classname
from fdbpl.images import InputRecipe
from fdbpl.losses import DEFAULT_WEIGHTS, FDBPLLoss, LossWeights
from fdbpl.models import load_open_clip
from fdbpl.prompts import NEGATIVE_INIT, RANDOM_N_CTX, DualPromptLearner
from fdbpl.schedules import epoch_schedule
from fdbpl.sparsify import SparseSoftLabels
from fdbpl.train import TrainConfig

PRECISIONS = ("fp16", "fp32", "amp")

#: ``TRAINER.FDBPL``: every key, its default and what it does (docs/coop-script.rst lists them).
DEFAULTS: dict[str, tuple[Any, str]] = {
    "TABLE": ("", 'a table built beforehand, checked against this run\'s draw ("": build or reuse one)'),
    "IMAGES": ("", 'the folder TABLE\'s image paths are relative to ("": DATASET.ROOT)'),
    "TABLES_DIR": ("output/fdbpl_tables", "where the trainer builds its tables, one folder per draw"),
    "TEACHER": ("ViT-L-14", "the teacher: an open_clip model name or model-config JSON"),
    "TEACHER_PRETRAINED": ("openai", 'the teacher\'s weights: open_clip tag, checkpoint path, or "none"'),
    "TEMPLATE": (TEACHER_TEMPLATE, "the teacher's prompt, one {} for the class name"),
    "NUM_CROPS": (BUILD_DEFAULTS.crops_per_image, "M, regions stored per image"),
    "TOPK": (BUILD_DEFAULTS.topk, "K, classes kept per region (all of them when there are fewer)"),
    "STRATEGY": (BUILD_DEFAULTS.strategy, "sparsification: mr (Eq. 5) or ms (Eq. 4)"),
    "BUILD_BATCH_SIZE": (BUILD_DEFAULTS.batch_size, "crops per teacher call while building"),
    "STORED_FEATURES": (True, "use a table's stored student features (checked against this student)"),
    "VERIFY": (True, "check every table file against its recorded SHA-256 before training"),
    "NEG_CTX_INIT": (NEGATIVE_INIT, 'the negative space\'s init phrase ("": NEG_N_CTX random tokens)'),
    "NEG_N_CTX": (RANDOM_N_CTX, "the negative contexts' length when random"),
    "CROPS_PER_IMAGE": (TrainConfig.crops_per_image, "regions of every image per step"),
    "LAMBDA_NEG": (DEFAULT_WEIGHTS.lambda_neg, "weight of the negative term (Eq. 17)"),
    "LAMBDA_DIFF1": (DEFAULT_WEIGHTS.lambda_diff1, "weight of the first-order difference (Eq. 17)"),
    "LAMBDA_DIFF2": (DEFAULT_WEIGHTS.lambda_diff2, "weight of the second-order difference (Eq. 17)"),
    "ALPHA": (DEFAULT_WEIGHTS.alpha, "alpha of the first-order difference (Eq. 13)"),
    "DELTA": (DEFAULT_WEIGHTS.delta, "delta of the second-order difference (Eq. 16)"),
    "CLASS_CHUNK_SIZE": (0, "> 0: classes per text pass, to bound its memory (many classes)"),
}


def extend_cfg(cfg) -> None:
    """Add ``TRAINER.FDBPL`` (:data:`DEFAULTS`) to CoOp's config; call it from ``train.py``'s
    ``extend_cfg``."""
    from yacs.config import CfgNode as CN

    cfg.TRAINER.FDBPL = CN()
    for key, (default, _) in DEFAULTS.items():
        cfg.TRAINER.FDBPL[key] = default


def load_clip_to_cpu(cfg) -> nn.Module:
    """CoOp's loader: the OpenAI-clip model ``MODEL.BACKBONE.NAME`` (a name of ``clip`` or a
    local file of its weights), on the CPU."""
    from clip import clip

    name = cfg.MODEL.BACKBONE.NAME
    model_path = name if osp.isfile(name) else clip._download(clip._MODELS[name])
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; CoOp's files are TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(model_path, map_location="cpu").eval().state_dict()
    except RuntimeError:
        state_dict = torch.load(model_path, map_location="cpu", weights_only=True)
    return clip.build_model(state_dict)


def _dassl_repeats() -> bool:
    """Whether this Dassl's few-shot draw repeats images by default (it did before 2022)."""
    try:
        from dassl.data.datasets import DatasetBase

        return bool(inspect.signature(DatasetBase.generate_fewshot_dataset).parameters["repeat"].default)
    except (ImportError, AttributeError, KeyError, TypeError, ValueError):
        return False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", osp.basename(str(text).rstrip("/"))) or "_"


class FDBPLCLIP(nn.Module):
    """The frozen CLIP and the dual prompts; ``forward(image)`` gives the positive logits
    (what Dassl's ``test()`` ranks)."""

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
        if cfg.OPTIM.WARMUP_EPOCH > 0 and not cfg.OPTIM.WARMUP_RECOUNT:
            raise ValueError("OPTIM.WARMUP_RECOUNT: only True (Dassl's default) is supported")

    def build_data_loader(self) -> None:
        """Dassl's loaders (test, val, class names); the training data come in ``before_train``."""
        super().build_data_loader()
        # CoOp's PromptLearner reads "american_bulldog" as "american bulldog"; so do fdbpl's tables
        self.classnames = [coop_classname(name) for name in self.dm.dataset.classnames]

    # -- the table ----------------------------------------------------------------------

    def draw(self) -> dict[str, Any]:
        """This run's few-shot draw, as a table's manifest records it."""
        cfg = self.cfg
        return {
            "dataset": cfg.DATASET.NAME,
            "split": "train",
            "shots": max(cfg.DATASET.NUM_SHOTS, 0),
            "seed": cfg.SEED,
            "subset": cfg.DATASET.get("SUBSAMPLE_CLASSES", "all"),
            "repeat": _dassl_repeats(),
        }

    def _training_items(self) -> list[tuple[str, str]]:
        return [(datum.impath, datum.classname) for datum in self.dm.dataset.train_x]

    def table_folder(self) -> str:
        """Where this draw's table is built: readable by draw, unique by what makes it."""
        f, draw = self.cfg.TRAINER.FDBPL, self.draw()
        makes = {
            "images": sorted(osp.abspath(path) for path, _ in self._training_items()),
            "draw": draw,
            **{
                key: f[key]
                for key in ("TEACHER", "TEACHER_PRETRAINED", "TEMPLATE", "NUM_CROPS", "TOPK", "STRATEGY")
            },
        }
        digest = hashlib.sha256(json.dumps(makes, sort_keys=True).encode()).hexdigest()[:10]
        shots = f"shots_{draw['shots']}" if draw["shots"] else "all"
        return osp.join(
            f.TABLES_DIR,
            _slug(draw["dataset"]),
            f"{shots}-seed_{draw['seed']}-{draw['subset']}",
            f"{_slug(f.TEACHER)}-{_slug(f.TEACHER_PRETRAINED)}-M{f.NUM_CROPS}-K{f.TOPK}-{f.STRATEGY}-{digest}",
        )

    def build_draw_table(self, out: str) -> None:
        """Build (or finish, or reuse) the table of Dassl's ``train_x`` in ``out``."""
        cfg, f = self.cfg, self.cfg.TRAINER.FDBPL
        root = cfg.DATASET.ROOT
        labels = {name: label for label, name in enumerate(self.classnames)}
        items = [(path, labels[coop_classname(name)]) for path, name in self._training_items()]
        if len({osp.abspath(path) for path, _ in items}) != len(items):
            raise ValueError(
                "DATASET.NUM_SHOTS: Dassl's draw holds some images twice; a table holds each once"
            )
        scan = scan_image_list(root, items, self.classnames)
        scan.source = self.draw()
        seed = max(cfg.SEED, 0)
        loaded = load_open_clip(f.TEACHER, f.TEACHER_PRETRAINED, device=str(self.device), seed=seed)
        teacher = clip_teacher(
            loaded.model,
            self.classnames,
            loaded.tokenizer,
            loaded.image_size,
            loaded.mean,
            loaded.std,
            template=f.TEMPLATE,
            description=loaded.identity(),
        )
        print(f"Building the FDBPL table of {len(items)} images in {out}")
        build_table(
            root,
            out,
            teacher,
            scan=scan,
            crops_per_image=f.NUM_CROPS,
            topk=f.TOPK,
            strategy=f.STRATEGY,
            seed=seed,
            batch_size=f.BUILD_BATCH_SIZE,
        )
        del loaded, teacher

    def open_table(self) -> tuple[RILTable, str]:
        """The table of this run's draw and its image root: built here, or given and checked."""
        cfg, f = self.cfg, self.cfg.TRAINER.FDBPL
        if f.TABLE:
            path, root = f.TABLE, f.IMAGES or cfg.DATASET.ROOT
        else:
            path, root = self.table_folder(), cfg.DATASET.ROOT
            self.build_draw_table(path)
        table = RILTable.open(path)
        try:
            check_table_draw(table, root, self._training_items(), self.classnames, self.draw())
        except ValueError as e:
            raise ValueError(
                f"TRAINER.FDBPL.TABLE: {e}. Leave TRAINER.FDBPL.TABLE empty and the trainer builds this draw's "
                f"table, or build it: fdbpl build-cache {cfg.DATASET.ROOT} OUT --dataset {cfg.DATASET.NAME} "
                f"--shots {max(cfg.DATASET.NUM_SHOTS, 0) or 'ALL'} --seed {cfg.SEED} "
                f"--subset {self.draw()['subset']} --teacher {f.TEACHER} --pretrained {f.TEACHER_PRETRAINED}"
            ) from None
        return table, root

    def before_train(self) -> None:
        """Build or check the table, then train on its regions (Dassl resumes after this)."""
        cfg, f = self.cfg, self.cfg.TRAINER.FDBPL
        self.table, root = self.open_table()
        self.use_features = bool(f.STORED_FEATURES) and self.table.has_features
        recipe = InputRecipe(cfg.INPUT.SIZE[0], tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD))
        if self.use_features:
            self.table.check_student(self.model.clip, recipe)
        self.train_set = RegionDataset(
            self.table,
            root,
            recipe=recipe,
            crops_per_image=f.CROPS_PER_IMAGE,
            seed=max(cfg.SEED, 0),
            features=self.use_features,
            verify=bool(f.VERIFY),
        )
        self.train_loader_x = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
            shuffle=True,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            drop_last=False,
        )
        self.log_setup()
        super().before_train()

    def log_setup(self) -> None:
        """What this run trains from, as CoOp prints its setup."""
        m, learner = self.table.manifest, self.model.prompt_learner
        teacher = m["teacher"]
        print(f"FDBPL table: {self.table.path}")
        print(f"  images {self.table.num_images}: {describe_source(m.get('source'))}")
        print(
            f"  {self.table.crops_per_image} crops per image, Top-{self.table.topk} {self.table.strategy.upper()}, "
            f"teacher {teacher.get('name', '?')} ({teacher.get('pretrained', '?')})"
        )
        inits = learner.inits
        for space in ("positive", "negative"):
            init = f'"{inits[space]}"' if inits.get(space) else "random"
            print(f"  {space} context: {learner.n_ctx[space]} tokens, init {init}")
        print(f"  contexts: {'one per class' if learner.class_specific else 'shared by all classes'}")
        used = "stored in the table (student checked)" if self.use_features else "encoded by the student"
        print(f"  image features: {used}")

    def before_epoch(self) -> None:
        super().before_epoch()
        self.train_set.set_epoch(self.epoch)  # a new stored region of every image

    # -- the model ------------------------------------------------------------------------

    def build_model(self) -> None:
        cfg, coop, f = self.cfg, self.cfg.TRAINER.COOP, self.cfg.TRAINER.FDBPL
        clip_model = load_clip_to_cpu(cfg)
        if coop.PREC in ("fp32", "amp"):
            clip_model.float()  # CoOp: fp16 keeps the half-precision weights
        from clip import clip

        inits = {
            "positive": coop.CTX_INIT.replace("_", " ") or None,
            "negative": f.NEG_CTX_INIT.replace("_", " ") or None,
        }
        lengths = {"positive": coop.N_CTX, "negative": f.NEG_N_CTX}
        learner = DualPromptLearner(
            clip_model,
            self.classnames,
            tokenizer=clip.tokenize,
            n_ctx={space: lengths[space] for space, init in inits.items() if init is None},
            positive_init=inits["positive"],
            negative_init=inits["negative"],
            class_specific=coop.CSC,
            class_token_position=coop.CLASS_TOKEN_POSITION,
            class_chunk_size=f.CLASS_CHUNK_SIZE or None,
        )
        self.model = FDBPLCLIP(clip_model, learner)
        for name, param in self.model.named_parameters():  # only the two contexts learn
            param.requires_grad_(name.startswith("prompt_learner."))
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = self.build_schedule(self.optim)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler("cuda") if coop.PREC == "amp" else None
        self.criterion = FDBPLLoss.from_weights(
            LossWeights(
                lambda_neg=f.LAMBDA_NEG,
                lambda_diff1=f.LAMBDA_DIFF1,
                lambda_diff2=f.LAMBDA_DIFF2,
                alpha=f.ALPHA,
                delta=f.DELTA,
            )
        )

    def build_schedule(self, optim: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Dassl's ``OPTIM`` schedule with warm-up, as plain state (see the module's docs)."""
        o = self.cfg.OPTIM
        warmup_lr = o.WARMUP_CONS_LR if o.WARMUP_TYPE == "constant" else o.WARMUP_MIN_LR
        return epoch_schedule(
            optim,
            o.MAX_EPOCH,
            name=o.LR_SCHEDULER,
            warmup_epochs=o.WARMUP_EPOCH,
            warmup_type=o.WARMUP_TYPE,
            warmup_lr=warmup_lr,
            stepsize=o.STEPSIZE,
            gamma=o.GAMMA,
        )

    def forward_backward(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        if batch["region"].ndim == 2:  # several regions per image: (B, n, ...) -> (B * n, ...)
            batch = {k: v.flatten(0, 1) for k, v in batch.items()}
        teacher = SparseSoftLabels.from_batch(batch, self.table.num_classes).to(self.device)
        weight = batch["weight"].to(self.device)
        scale = self.model.clip.logit_scale.exp().detach()
        if self.scaler is not None:  # PREC amp, as CoOp
            with torch.autocast(self.device.type):
                out = self._loss(batch, teacher, weight, scale)
            self.optim.zero_grad()
            self.scaler.scale(out.total).backward()
            self.scaler.step(self.optim)
            self.scaler.update()
        else:
            out = self._loss(batch, teacher, weight, scale)
            self.model_backward_and_update(out.total)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()  # CoOp steps its schedule once per epoch
        return {name: float(value.detach()) for name, value in out._asdict().items()}

    def _loss(self, batch, teacher, weight, scale):
        if self.use_features:  # the student's features, stored in the table and checked
            image_features = batch["features"].to(self.device).float()
        else:
            image_features = self.model.image_features(batch["image"].to(self.device))
        positive, negative = self.model.prompt_learner()
        return self.criterion(image_features, positive, negative, teacher, weight, scale)

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """Load the contexts saved by ``register_model`` (CoOp's file layout) with
        ``weights_only=True``. Shared contexts load for any class list (base, new, another
        dataset's); class-specific ones only for their own class names."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            path = osp.join(directory, name, model_file)
            if not osp.exists(path):
                found = sorted(os.listdir(osp.dirname(path))) if osp.isdir(osp.dirname(path)) else []
                raise FileNotFoundError(
                    f'Model not found at "{path}" (there: {", ".join(found) or "nothing"})'
                )
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            print(f'Loading weights to {name} from "{path}" (epoch = {checkpoint["epoch"]})')
            self._models[name].load_contexts(checkpoint["state_dict"])
