"""examples/dassl/fdbpl_trainer.py on a stand-in of the Dassl API it touches (tests/standins),
with an OpenAI-clip model built from a random state dict, as CoOp's loader builds it."""

from __future__ import annotations

import copy
import importlib.util
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import toy_teacher

from fdbpl.cache import build_table, scan_image_folder
from fdbpl.errors import FDBPLError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trainer_module(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "standins"))
    for name in [
        m for m in list(__import__("sys").modules) if m == "dassl" or m.startswith(("dassl.", "yacs"))
    ]:
        monkeypatch.delitem(__import__("sys").modules, name)
    spec = importlib.util.spec_from_file_location(
        "fdbpl_trainer", ROOT / "examples" / "dassl" / "fdbpl_trainer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def openai_clip():
    """A tiny OpenAI-clip model rebuilt by ``clip.build_model`` from a random state dict (fp16, as loaded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP, build_model
    torch.manual_seed(0)
    random = CLIP(64, 32, 2, 64, 8, 77, 49408, 64, 4, 2)
    return build_model(random.state_dict()).eval()


@pytest.fixture(scope="module")
def table(tmp_path_factory, image_root):
    scan = scan_image_folder(image_root)
    out = tmp_path_factory.mktemp("dassl") / "table"
    build_table(image_root, out, toy_teacher(len(scan.classnames)), crops_per_image=4, topk=3, progress=False)
    return out


def make_cfg(module, image_root, table, out, **coop):
    from yacs.config import CfgNode as CN

    cfg = CN()
    cfg.SEED = 1
    cfg.OUTPUT_DIR = str(out)
    cfg.DATASET = CN(ROOT=str(image_root))
    cfg.INPUT = CN(
        SIZE=(32, 32),
        PIXEL_MEAN=[0.48145466, 0.4578275, 0.40821073],
        PIXEL_STD=[0.26862954, 0.26130258, 0.27577711],
    )
    cfg.DATALOADER = CN(TRAIN_X=CN(BATCH_SIZE=8), NUM_WORKERS=0)
    cfg.OPTIM = CN(LR=0.1, MAX_EPOCH=3)
    cfg.MODEL = CN(BACKBONE=CN(NAME="ViT-B/16"))
    cfg.TRAINER = CN(
        COOP=CN(N_CTX=16, CTX_INIT="a photo of a", CSC=False, CLASS_TOKEN_POSITION="end", PREC="fp32")
    )
    cfg.TRAINER.COOP.update(coop)
    module.extend_cfg(cfg)
    cfg.TRAINER.FDBPL.TABLE = str(table)
    cfg.TRAINER.FDBPL.IMAGES = str(image_root)
    return cfg


@pytest.mark.parametrize(
    "coop",
    [
        dict(PREC="fp32"),
        dict(PREC="fp16"),
        dict(PREC="fp32", CTX_INIT="", N_CTX=16, CSC=True, CLASS_TOKEN_POSITION="middle"),  # CoOp's default
    ],
    ids=["fp32", "fp16", "random-16-csc-middle"],
)
def test_the_trainer_trains_saves_loads_and_tests(
    trainer_module, openai_clip, image_root, table, tmp_path, monkeypatch, coop
):
    monkeypatch.setattr(trainer_module, "load_clip_to_cpu", lambda cfg: copy.deepcopy(openai_clip))
    cfg = make_cfg(trainer_module, image_root, table, tmp_path / "out", **coop)
    trainer = trainer_module.FDBPL(cfg)
    learner = trainer.model.prompt_learner
    if coop.get("CTX_INIT") == "":
        assert learner.n_ctx == {"positive": 16, "negative": 4} and learner.class_specific
    clip_before = {k: v.clone() for k, v in trainer.model.clip.state_dict().items()}
    contexts_before = learner.positive_context.detach().clone()
    trainable = sorted(n for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert trainable == ["prompt_learner.negative_context", "prompt_learner.positive_context"]
    trainer.train()
    # the schedule moved once per epoch, the prompts learned, the CLIP model did not change
    assert trainer.sched.last_epoch == cfg.OPTIM.MAX_EPOCH
    assert not torch.equal(learner.positive_context, contexts_before)
    assert all(torch.equal(v, clip_before[k]) for k, v in trainer.model.clip.state_dict().items())
    assert trainer.model.clip.logit_scale.grad is None
    assert set(trainer.loss_summary) == {"total", "positive", "negative", "first_order", "second_order"}
    accuracy = trainer.test()
    assert 0.0 <= accuracy <= 100.0
    # load_model restores both spaces into a fresh trainer, and test() agrees
    fresh = trainer_module.FDBPL(cfg)
    fresh.load_model(cfg.OUTPUT_DIR)
    for name in ("positive_context", "negative_context"):
        torch.testing.assert_close(
            getattr(fresh.model.prompt_learner, name), getattr(learner, name), rtol=0, atol=0
        )
    assert fresh.test() == accuracy


def test_a_checkpoint_of_other_classes_is_refused(
    trainer_module, openai_clip, image_root, table, tmp_path, monkeypatch
):
    monkeypatch.setattr(trainer_module, "load_clip_to_cpu", lambda cfg: copy.deepcopy(openai_clip))
    cfg = make_cfg(trainer_module, image_root, table, tmp_path / "out")
    cfg.OPTIM.MAX_EPOCH = 1
    trainer = trainer_module.FDBPL(cfg)
    trainer.train()
    state = torch.load(tmp_path / "out" / "prompt_learner" / "model-best.pth.tar", weights_only=True)
    state["state_dict"]["_extra_state"]["classnames"][0] = "another class"
    torch.save(state, tmp_path / "out" / "prompt_learner" / "model-best.pth.tar")
    with pytest.raises(FDBPLError, match="they first differ at index 0"):
        trainer_module.FDBPL(cfg).load_model(cfg.OUTPUT_DIR)


@pytest.mark.parametrize(("key", "value", "match"), [("PREC", "bf16", "PREC"), ("TABLE", "", "TABLE")])
def test_bad_configs_are_refused(
    trainer_module, openai_clip, image_root, table, tmp_path, monkeypatch, key, value, match
):
    monkeypatch.setattr(trainer_module, "load_clip_to_cpu", lambda cfg: copy.deepcopy(openai_clip))
    cfg = make_cfg(trainer_module, image_root, table, tmp_path)
    (cfg.TRAINER.COOP if key == "PREC" else cfg.TRAINER.FDBPL)[key] = value
    with pytest.raises(ValueError, match=match):
        trainer_module.FDBPL(cfg)
