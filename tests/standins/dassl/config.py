"""Stand-in for ``dassl.config``: the defaults (Dassl's values) of the keys CoOp's FDBPL runs read."""

from __future__ import annotations

from yacs.config import CfgNode as CN


def get_cfg_default():
    c = CN()
    c.OUTPUT_DIR, c.RESUME, c.SEED, c.USE_CUDA = "./output", "", -1, True
    c.INPUT = CN()
    c.INPUT.SIZE, c.INPUT.INTERPOLATION, c.INPUT.TRANSFORMS = (224, 224), "bilinear", ()
    c.INPUT.PIXEL_MEAN, c.INPUT.PIXEL_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    c.DATASET = CN()
    c.DATASET.ROOT, c.DATASET.NAME, c.DATASET.NUM_SHOTS = "", "", -1
    c.DATASET.SOURCE_DOMAINS, c.DATASET.TARGET_DOMAINS = (), ()
    c.DATALOADER = CN()
    c.DATALOADER.NUM_WORKERS = 4
    c.DATALOADER.TRAIN_X = CN()
    c.DATALOADER.TRAIN_X.BATCH_SIZE = 32
    c.DATALOADER.TEST = CN()
    c.DATALOADER.TEST.BATCH_SIZE = 32
    c.MODEL = CN()
    c.MODEL.INIT_WEIGHTS = ""
    c.MODEL.BACKBONE = CN()
    c.MODEL.BACKBONE.NAME = ""
    c.MODEL.HEAD = CN()
    c.MODEL.HEAD.NAME = ""
    c.OPTIM = CN()
    c.OPTIM.NAME, c.OPTIM.LR, c.OPTIM.WEIGHT_DECAY, c.OPTIM.MOMENTUM = "adam", 0.0003, 5e-4, 0.9
    c.OPTIM.MAX_EPOCH, c.OPTIM.LR_SCHEDULER, c.OPTIM.STEPSIZE, c.OPTIM.GAMMA = 10, "single_step", (-1,), 0.1
    c.OPTIM.WARMUP_EPOCH, c.OPTIM.WARMUP_TYPE, c.OPTIM.WARMUP_RECOUNT = -1, "linear", True
    c.OPTIM.WARMUP_CONS_LR, c.OPTIM.WARMUP_MIN_LR = 1e-5, 1e-5
    c.TRAIN = CN()
    c.TRAIN.CHECKPOINT_FREQ, c.TRAIN.PRINT_FREQ = 0, 10
    c.TEST = CN()
    c.TEST.NO_TEST, c.TEST.SPLIT, c.TEST.FINAL_MODEL = False, "test", "last_step"
    c.TRAINER = CN()
    c.TRAINER.NAME = ""
    return c
