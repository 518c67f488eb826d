"""examples/dassl/fdbpl_trainer.py and examples/dassl/scripts/ on stand-ins of Dassl and of CoOp's
train.py (tests/standins), a tiny dataset in CoOp's OxfordPets layout, the real yacs, an
OpenAI-clip model built from a random state dict (as CoOp's loader builds it) and a tiny
random open_clip teacher."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fdbpl.cache import RILTable
from fdbpl.cache.scan import scan_split
from fdbpl.data import read_dataset
from fdbpl.errors import FDBPLError
from fdbpl.evaluate import evaluate_prompts
from fdbpl.images import InputRecipe
from fdbpl.synthetic import SYNTHETIC_CLASSES, draw_image_folder

ROOT = Path(__file__).resolve().parents[1]
STANDINS = ROOT / "tests" / "standins"
CLASSES = list(SYNTHETIC_CLASSES)[:6]  # CoOp's halves: 3 base, 3 new
OTHER_CLASSES = list(SYNTHETIC_CLASSES)[5:]  # another dataset's, for cross-dataset transfer
SIZE, MEAN, STD = 32, [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _write_split_dataset(base, split_file, classes):
    """A dataset of CoOp's split-file layout under ``base``: images/CLASS/N.png (4 train, 1 val,
    2 test images per class) and its split file."""
    images = draw_image_folder(base / "images", classes, per_class=7, size=(48, 40))
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        files = sorted(p.name for p in (images / name).iterdir())
        for part, chosen in (("train", files[:4]), ("val", files[4:5]), ("test", files[5:])):
            split[part] += [[f"{name}/{f}", label, name] for f in chosen]
    (base / split_file).write_text(json.dumps(split))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """CoOp's DATASET.ROOT holding OxfordPets (6 classes) and DescribableTextures (3 others)."""
    root = tmp_path_factory.mktemp("coop-data")
    _write_split_dataset(root / "oxford_pets", "split_zhou_OxfordPets.json", CLASSES)
    _write_split_dataset(root / "dtd", "split_zhou_DescribableTextures.json", OTHER_CLASSES)
    return root


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A tiny OpenAI-clip model's random state dict, saved as a file CoOp's loader reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import CLIP

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "tiny-clip.pt"
    torch.save(CLIP(64, SIZE, 2, 64, 8, 77, 49408, 64, 4, 2).state_dict(), path)
    return path


def _purge_standin_modules(monkeypatch):
    for name in [
        m for m in sys.modules if m in ("dassl", "trainers") or m.startswith(("dassl.", "trainers."))
    ]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def trainer_module(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDINS))
    _purge_standin_modules(monkeypatch)
    spec = importlib.util.spec_from_file_location(
        "fdbpl_trainer", ROOT / "examples" / "dassl" / "fdbpl_trainer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_cfg(module, data_root, clip_file, teacher_files, out, *, seed=1, shots=2, subset="base", **coop):
    """The config CoOp's train.py builds for fdbpl.yaml with a tiny model, epochs and table."""
    from dassl.config import get_cfg_default
    from yacs.config import CfgNode as CN

    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CN(dict(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"))
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"
    module.extend_cfg(cfg)
    cfg.merge_from_file(str(ROOT / "examples" / "dassl" / "fdbpl.yaml"))
    config, checkpoint = teacher_files
    cfg.merge_from_list(
        [
            "DATASET.ROOT", str(data_root), "DATASET.NAME", "OxfordPets", "DATASET.NUM_SHOTS", shots,
            "DATASET.SUBSAMPLE_CLASSES", subset, "SEED", seed, "OUTPUT_DIR", str(out),
            "MODEL.BACKBONE.NAME", str(clip_file), "INPUT.SIZE", (SIZE, SIZE), "OPTIM.MAX_EPOCH", 2,
            "DATALOADER.TRAIN_X.BATCH_SIZE", 4, "DATALOADER.NUM_WORKERS", 0, "TRAINER.COOP.PREC", "fp32",
            "TRAINER.FDBPL.TEACHER", str(config), "TRAINER.FDBPL.TEACHER_PRETRAINED", str(checkpoint),
            "TRAINER.FDBPL.NUM_CROPS", 3, "TRAINER.FDBPL.TABLES_DIR", str(out.parent / "tables"),
        ]
    )  # fmt: skip
    for key, value in coop.items():
        cfg.TRAINER.COOP[key] = value
    return cfg


@pytest.fixture
def cfg_for(trainer_module, data_root, clip_file, teacher_files, tmp_path):
    def make(out="out", **kwargs):
        return make_cfg(trainer_module, data_root, clip_file, teacher_files, tmp_path / out, **kwargs)

    return make


def _table_folders(cfg):
    return sorted(p.parent for p in Path(cfg.TRAINER.FDBPL.TABLES_DIR).rglob("manifest.json"))


@pytest.mark.parametrize(
    "coop",
    [
        dict(PREC="fp32"),
        dict(PREC="fp16", CTX_INIT="a photo of a"),
        dict(CSC=True, CLASS_TOKEN_POSITION="middle"),
    ],
    ids=["fp32-random-16", "fp16-phrase", "csc-middle"],
)
def test_the_trainer_builds_the_draws_table_trains_and_resumes(trainer_module, cfg_for, capsys, coop):
    cfg = cfg_for(**coop)
    trainer = trainer_module.FDBPL(cfg)
    assert not _table_folders(cfg)  # nothing is built before training: --eval-only needs no table
    learner = trainer.model.prompt_learner
    clip_before = {k: v.clone() for k, v in trainer.model.clip.state_dict().items()}
    contexts_before = learner.positive_context.detach().clone()
    with pytest.warns(UserWarning, match="topk: K=20 is more than the 3 classes; keeping all 3"):
        trainer.train()
    log = capsys.readouterr().out
    # the table holds exactly Dassl's draw (2 shots of the 3 base classes, seed 1) and says so
    (folder,) = _table_folders(cfg)
    table = RILTable.open(folder)
    want = {(Path(d.impath).resolve(), d.classname.replace("_", " ")) for d in trainer.dm.dataset.train_x}
    got = {
        (Path(cfg.DATASET.ROOT, r["path"]).resolve(), table.classnames[r["label"]])
        for r in table.manifest["images"]
    }
    assert got == want and len(got) == 6
    assert table.manifest["source"] == {
        "dataset": "OxfordPets", "split": "train", "shots": 2, "seed": 1, "subset": "base", "repeat": False
    }  # fmt: skip
    assert table.topk == 3 and table.crops_per_image == 3
    assert "OxfordPets train, 2-shot draw, seed 1, base classes" in log and "image features: encoded" in log
    # the schedule moved once per epoch (Dassl's constant warm-up, then cosine), the prompts learned
    assert trainer.sched.last_epoch == cfg.OPTIM.MAX_EPOCH
    assert trainer.optim.param_groups[0]["lr"] == pytest.approx(
        0.1 * (1 + torch.cos(torch.tensor(torch.pi / 2))) / 2
    )
    assert not torch.equal(learner.positive_context, contexts_before)
    assert all(torch.equal(v, clip_before[k]) for k, v in trainer.model.clip.state_dict().items())
    assert set(trainer.loss_summary) == {"total", "positive", "negative", "first_order", "second_order"}
    # the checkpoint is plain data (weights_only), and a longer run resumes from it and reuses the table
    saved = Path(cfg.OUTPUT_DIR, "prompt_learner", "model.pth.tar-2")
    assert torch.load(saved, weights_only=True)["epoch"] == 2
    manifest_time = (folder / "manifest.json").stat().st_mtime_ns
    cfg.defrost()
    cfg.OPTIM.MAX_EPOCH = 3
    longer = trainer_module.FDBPL(cfg)
    longer.train()
    assert longer.start_epoch == 2 and longer.sched.last_epoch == 3
    assert _table_folders(cfg) == [folder] and (folder / "manifest.json").stat().st_mtime_ns == manifest_time


def _train(trainer_module, cfg):
    trainer = trainer_module.FDBPL(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    return trainer


def test_a_table_of_another_draw_is_refused_naming_the_difference(trainer_module, cfg_for):
    seed2 = cfg_for("seed2", seed=2)
    _train(trainer_module, seed2)
    (other,) = _table_folders(seed2)
    cases = [
        (dict(seed=1), "was drawn for seed 2; this run's seed is 1"),
        (dict(seed=2, shots=3), "was drawn for shots 2; this run's shots is 3"),
        (dict(seed=2, subset="new"), "was drawn for subset 'base'; this run's subset is 'new'"),
    ]
    for kwargs, match in cases:
        cfg = cfg_for(**kwargs)
        cfg.TRAINER.FDBPL.TABLE = str(other)
        trainer = trainer_module.FDBPL(cfg)
        with pytest.raises(ValueError, match=match) as info:
            trainer.train()
        assert "fdbpl build-cache" in str(info.value) and f"--seed {kwargs['seed']}" in str(info.value)
    # a table without a recorded draw: its images are compared one by one
    manifest = json.loads((other / "manifest.json").read_text())
    del manifest["source"]
    stripped = Path(cfg_for().OUTPUT_DIR).parent / "stripped"
    shutil.copytree(other, stripped)
    (stripped / "manifest.json").write_text(json.dumps(manifest))
    cfg = cfg_for()
    cfg.TRAINER.FDBPL.TABLE = str(stripped)
    with pytest.raises(ValueError, match=r"does not hold .*\.png, an image of this training set"):
        trainer_module.FDBPL(cfg).train()


def test_a_table_built_by_build_cache_for_the_same_draw_is_accepted(
    trainer_module, cfg_for, data_root, teacher_files
):
    from fdbpl.cli import main

    cfg = cfg_for()
    out = Path(cfg.OUTPUT_DIR).parent / "cli-table"
    config, checkpoint = teacher_files
    args = [
        "build-cache",
        data_root,
        out,
        "--dataset",
        "OxfordPets",
        "--shots",
        2,
        "--seed",
        1,
        "--subset",
        "base",
    ]
    args += [
        "--teacher",
        config,
        "--pretrained",
        checkpoint,
        "--crops-per-image",
        2,
        "--topk",
        20,
        "--no-progress",
    ]
    assert main([str(a) for a in args]) == 0
    cfg.TRAINER.FDBPL.TABLE = str(out)
    trainer = _train(trainer_module, cfg)
    assert trainer.table.path == out and not _table_folders(cfg)


def _new_class_accuracy(student, output_dir, data_root):
    """fdbpl's evaluate_prompts of the contexts a run saved at epoch 2, on OxfordPets' new
    classes' test images."""
    from clip import clip

    checkpoint = torch.load(output_dir / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    data = read_dataset("OxfordPets", data_root, subsample="new")
    return evaluate_prompts(
        student,
        data_root,
        {"learner": checkpoint["state_dict"]},
        scan=scan_split(data, data_root, "test", check=False),
        transfer=True,
        tokenizer=clip.tokenize,
        recipe=InputRecipe(SIZE, tuple(MEAN), tuple(STD)),
    ).percent


def test_eval_only_loads_shared_contexts_for_new_classes_without_a_table(trainer_module, cfg_for, data_root):
    base = cfg_for("base")
    trained = _train(trainer_module, base)
    new = cfg_for("new", subset="new")
    new.TRAINER.FDBPL.TABLES_DIR = "/nonexistent/never/used"
    evaluator = trainer_module.FDBPL(new)
    evaluator.load_model(base.OUTPUT_DIR, epoch=2)
    assert evaluator.classnames == [n.replace("_", " ") for n in CLASSES[3:]]
    torch.testing.assert_close(
        evaluator.model.prompt_learner.positive_context,
        trained.model.prompt_learner.positive_context,
        rtol=0,
        atol=0,
    )
    accuracy = evaluator.test()
    # fdbpl's own evaluation of the same contexts on the same new-class test images agrees
    want = _new_class_accuracy(evaluator.model.clip, Path(base.OUTPUT_DIR), data_root)
    assert accuracy == pytest.approx(want, abs=1e-9)


def test_class_specific_contexts_load_only_for_their_classes(trainer_module, cfg_for):
    base = cfg_for("base", CSC=True)
    _train(trainer_module, base)
    same = trainer_module.FDBPL(cfg_for("same", CSC=True))
    same.load_model(base.OUTPUT_DIR, epoch=2)  # the same classes: loads
    with pytest.raises(FDBPLError, match="they first differ at index 0: 'red circle' in the checkpoint"):
        trainer_module.FDBPL(cfg_for("new", subset="new", CSC=True)).load_model(base.OUTPUT_DIR, epoch=2)
    with pytest.raises(FileNotFoundError, match=r"model.pth.tar-7.*there: checkpoint, model.pth.tar-2"):
        same.load_model(base.OUTPUT_DIR, epoch=7)


def test_stored_student_features_are_checked_against_the_student(
    trainer_module, cfg_for, data_root, teacher_files
):
    from fdbpl.cli import main

    cfg = cfg_for()
    out = Path(cfg.OUTPUT_DIR).parent / "with-features"
    config, checkpoint = teacher_files
    args = [
        "build-cache",
        data_root,
        out,
        "--dataset",
        "OxfordPets",
        "--shots",
        2,
        "--seed",
        1,
        "--subset",
        "base",
    ]
    args += ["--teacher", config, "--pretrained", checkpoint, "--crops-per-image", 2, "--no-progress"]
    args += ["--student", config, "--student-pretrained", checkpoint]  # another model than CoOp's student
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(a) for a in args]) == 0
    cfg.TRAINER.FDBPL.TABLE = str(out)
    with pytest.raises(FDBPLError, match="belong to another student"):
        trainer_module.FDBPL(cfg).train()
    cfg.TRAINER.FDBPL.STORED_FEATURES = False  # the images are encoded instead
    trainer = _train(trainer_module, cfg)
    assert not trainer.use_features


def test_bad_configs_are_refused(trainer_module, cfg_for):
    cfg = cfg_for()
    cfg.TRAINER.COOP.PREC = "bf16"
    with pytest.raises(ValueError, match=r"TRAINER\.COOP\.PREC"):
        trainer_module.FDBPL(cfg)
    cfg = cfg_for()
    cfg.OPTIM.WARMUP_RECOUNT = False
    with pytest.raises(ValueError, match="WARMUP_RECOUNT"):
        trainer_module.FDBPL(cfg)


def test_every_key_is_documented_with_its_default(trainer_module):
    doc = (ROOT / "docs" / "coop-script.rst").read_text()
    for key, (default, _) in trainer_module.DEFAULTS.items():
        assert re.search(rf"\* - ``{key}``\s+- ``{re.escape(repr(default))}``", doc), key


def _fake_coop(tmp_path, data_root, clip_file, teacher_files):
    """CoOp's tree as the guide leaves it: train.py (with the guide's line), the datasets'
    config, the trainer, its config (tiny model, 2 epochs) and the scripts."""
    coop = tmp_path / "CoOp"
    (coop / "trainers").mkdir(parents=True)
    (coop / "trainers" / "__init__.py").write_text("")
    shutil.copy(STANDINS / "coop" / "train.py", coop / "train.py")
    shutil.copy(ROOT / "examples" / "dassl" / "fdbpl_trainer.py", coop / "trainers")
    (coop / "configs" / "datasets").mkdir(parents=True)
    for name, dataset in (("oxford_pets", "OxfordPets"), ("dtd", "DescribableTextures")):
        (coop / "configs" / "datasets" / f"{name}.yaml").write_text(f'DATASET:\n  NAME: "{dataset}"\n')
    (coop / "configs" / "trainers" / "FDBPL").mkdir(parents=True)
    config, checkpoint = teacher_files
    tiny = (ROOT / "examples" / "dassl" / "fdbpl.yaml").read_text()
    tiny = tiny.replace("MAX_EPOCH: 50", "MAX_EPOCH: 2").replace('NAME: "ViT-B/16"', f'NAME: "{clip_file}"')
    tiny = tiny.replace("SIZE: (224, 224)", f"SIZE: ({SIZE}, {SIZE})").replace(
        "NUM_WORKERS: 8", "NUM_WORKERS: 0"
    )
    tiny = tiny.replace("BATCH_SIZE: 128", "BATCH_SIZE: 4").replace('PREC: "fp16"', 'PREC: "fp32"')
    tiny = tiny.replace('TEACHER: "ViT-L-14"', f'TEACHER: "{config}"').replace(
        "NUM_CROPS: 500", "NUM_CROPS: 2"
    )
    tiny = tiny.replace('TEACHER_PRETRAINED: "openai"', f'TEACHER_PRETRAINED: "{checkpoint}"')
    (coop / "configs" / "trainers" / "FDBPL" / "tiny.yaml").write_text(tiny)
    shutil.copytree(ROOT / "examples" / "dassl" / "scripts", coop / "scripts" / "fdbpl")
    return coop


def _script(coop, name, *args, **env):
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDINS), os.environ.get("PYTHONPATH", "")]),
        "PYTHONWARNINGS": "ignore",
        "PYTHON": sys.executable,
        "CFG": "tiny",
        "SHOTS": "2",
        "LOADEP": "2",
        **env,
    }
    r = subprocess.run(
        ["bash", str(coop / "scripts" / "fdbpl" / name), *map(str, args)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _accuracy(stdout):
    return float(re.findall(r"\* accuracy: ([\d.]+)%", stdout)[-1])


def test_the_base_to_new_scripts_run_end_to_end(tmp_path, data_root, clip_file, teacher_files, capsys):
    coop = _fake_coop(tmp_path, data_root, clip_file, teacher_files)
    env = {"DATA": str(data_root)}
    trained = _script(coop, "base2new_train.sh", "oxford_pets", 1, **env)
    assert "OxfordPets train, 2-shot draw, seed 1, base classes" in trained
    model_dir = coop / "output/base2new/train_base/oxford_pets/shots_2/FDBPL/tiny/seed1"
    assert (model_dir / "prompt_learner" / "model.pth.tar-2").is_file()
    new = _script(coop, "base2new_test.sh", "oxford_pets", 1, **env)
    base = _script(coop, "base2new_test.sh", "oxford_pets", 1, SUB="base", **env)
    assert (coop / "output/base2new/test_new/oxford_pets/shots_2/FDBPL/tiny/seed1").is_dir()
    assert "Building the FDBPL table" not in new + base  # evaluation needs no table
    assert _accuracy(trained) == _accuracy(base)  # the trained model's own test on base classes
    # the new-class accuracy is fdbpl's evaluation of the same contexts on the new classes' test images
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from clip.model import build_model
    student = build_model(torch.load(clip_file, weights_only=True)).float().eval()
    assert _accuracy(new) == pytest.approx(_new_class_accuracy(student, model_dir, data_root), abs=1e-3)
    # fdbpl evaluate reads its own runs, and says what to run for a CoOp output folder
    from fdbpl.cli import main

    assert main(["evaluate", str(model_dir), str(data_root)]) == 2
    err = capsys.readouterr().err
    assert "is an output folder of CoOp's train.py (prompt_learner/model.pth.tar-2)" in err
    assert f"--eval-only --model-dir {model_dir} --load-epoch 2" in err
    # a second seed draws other images: another table, built by its own run
    _script(coop, "base2new_train.sh", "oxford_pets", 2, **env)
    tables = sorted((coop / "output" / "fdbpl_tables" / "OxfordPets").iterdir())
    assert [t.name for t in tables] == ["shots_2-seed_1-base", "shots_2-seed_2-base"]


def test_the_cross_dataset_scripts_train_on_all_classes_and_test_another_dataset(
    tmp_path, data_root, clip_file, teacher_files
):
    coop = _fake_coop(tmp_path, data_root, clip_file, teacher_files)
    env = {"DATA": str(data_root), "SOURCE": "oxford_pets"}
    trained = _script(coop, "xd_train.sh", 1, DATASET="oxford_pets", **env)
    assert "OxfordPets train, 2-shot draw, seed 1, all classes" in trained
    assert (coop / "output/oxford_pets/FDBPL/tiny_2shots/seed1/prompt_learner/model.pth.tar-2").is_file()
    out = _script(coop, "xd_test.sh", "dtd", 1, **env)  # three other classes, two test images each
    assert min(abs(_accuracy(out) - 100 * k / 6) for k in range(7)) < 1e-3
    assert (coop / "output/evaluation/FDBPL/tiny_2shots/dtd/seed1").is_dir()
