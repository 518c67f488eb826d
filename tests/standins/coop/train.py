"""Stand-in for CoOp's ``train.py`` (its arguments, config order and eval-only path), with the
one line the guide adds at the end of ``extend_cfg``. The tests copy it into a fake CoOp root."""

import argparse
import os

from dassl.config import get_cfg_default
from dassl.engine import build_trainer


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed:
        cfg.SEED = args.seed
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone


def extend_cfg(cfg):
    from yacs.config import CfgNode as CN

    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CSC = False
    cfg.TRAINER.COOP.CTX_INIT = ""
    cfg.TRAINER.COOP.PREC = "fp16"
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    # the guide's one line:
    import trainers.fdbpl_trainer; trainers.fdbpl_trainer.extend_cfg(cfg)  # noqa: E702, I001  # fmt: skip


def setup_cfg(args):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if args.dataset_config_file:
        cfg.merge_from_file(args.dataset_config_file)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def main(args):
    cfg = setup_cfg(args)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)  # Dassl's setup_logger writes log.txt there
    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
        trainer.test()
        return
    if not args.no_train:
        trainer.train()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--root", "--output-dir", "--resume", "--config-file", "--dataset-config-file"):
        parser.add_argument(flag, type=str, default="")
    for flag in ("--trainer", "--backbone", "--head", "--model-dir"):
        parser.add_argument(flag, type=str, default="")
    parser.add_argument("--seed", type=int, default=-1)
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--load-epoch", type=int)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER)
    main(parser.parse_args())
