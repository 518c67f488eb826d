"""Training from a table, resuming, distributed training, evaluation and the base-to-new split."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from models import tiny_open_clip
from processes import run_fdbpl

import fdbpl.train as train_module
from fdbpl.cache import RILTable, build_table, clip_teacher, scan_image_folder
from fdbpl.cache.images import decode_image
from fdbpl.errors import FDBPLError
from fdbpl.evaluate import evaluate_prompts, harmonic_mean, learner_for, preprocess
from fdbpl.split import select_images, split_classes
from fdbpl.train import TrainConfig, load_run, train

CONFIG = TrainConfig(epochs=3, batch_size=8, crops_per_image=2, lr=0.05)


@pytest.fixture(scope="module")
def table(tmp_path_factory, image_root, loaded_teacher):
    scan = select_images(scan_image_folder(image_root), "base")
    lt = loaded_teacher
    teacher = clip_teacher(lt.model, scan.classnames, lt.tokenizer, lt.image_size, lt.mean, lt.std)
    out = tmp_path_factory.mktemp("train") / "table"
    build_table(image_root, out, teacher, scan=scan, crops_per_image=6, topk=3, batch_size=24, progress=False)
    return RILTable.open(out)


def run_train(table, image_root, run, config=CONFIG):
    student, tok = tiny_open_clip("clip", seed=5)
    return train(table, image_root, student, run, config=config, tokenizer=tok, image_size=32, progress=False)


def test_training_logs_every_part_and_checkpoints_both_spaces(table, image_root, tmp_path):
    result = run_train(table, image_root, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [entry for entry in lines if "total" in entry]
    epochs = [entry for entry in lines if entry.get("epoch_done")]
    assert len(steps) == result.steps == 3 * 2  # 12 images / batch 8 = 2 steps per epoch
    assert set(steps[0]) >= {"total", "positive", "negative", "first_order", "second_order", "lr"}
    n = table.num_images
    for e in epochs:  # every image exactly once per epoch
        assert (e["items"], e["item_id_sum"], e["item_id_square_sum"]) == (
            n,
            n * (n - 1) // 2,
            sum(i * i for i in range(n)),
        )
    state = load_run(tmp_path / "run")
    assert set(state["learner"]) == {"positive_context", "negative_context", "_extra_state"}
    assert state["classnames"] == table.classnames and state["epoch"] == 3
    assert not torch.equal(
        state["learner"]["positive_context"],
        learner_for(tiny_open_clip("clip")[0], table.classnames, None).positive_context.detach(),
    )


def test_interrupted_training_resumes_to_the_same_prompts(table, image_root, tmp_path, monkeypatch):
    run_train(table, image_root, tmp_path / "straight")
    saves = {"n": 0, "steps_after": 0}
    real_save, real_loss = train_module._save_checkpoint, train_module.FDBPLLoss

    def count_saves(path, state):
        real_save(path, state)
        saves["n"] += 1

    class CrashingLoss(real_loss):
        def forward(self, *args, **kwargs):
            if saves["n"] == 2:  # one step into epoch 3, then the machine dies
                saves["steps_after"] += 1
                if saves["steps_after"] == 2:
                    raise KeyboardInterrupt("simulated crash in epoch 3")
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(train_module, "_save_checkpoint", count_saves)
    monkeypatch.setattr(train_module, "FDBPLLoss", CrashingLoss)
    with pytest.raises(KeyboardInterrupt):
        run_train(table, image_root, tmp_path / "resumed")
    monkeypatch.setattr(train_module, "FDBPLLoss", real_loss)
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    assert load_run(tmp_path / "resumed")["epoch"] == 2
    run_train(table, image_root, tmp_path / "resumed")
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    for key in ("positive_context", "negative_context"):
        assert torch.equal(a["learner"][key], b["learner"][key])
    logs = [(tmp_path / run / "log.jsonl").read_text().splitlines() for run in ("straight", "resumed")]
    assert [json.loads(x)["step"] for x in logs[0] if "step" in x] == [
        json.loads(x)["step"] for x in logs[1] if "step" in x
    ]


def test_a_run_refuses_another_table(table, image_root, tmp_path, loaded_teacher):
    run_train(table, image_root, tmp_path / "run", TrainConfig(epochs=1, batch_size=8))
    scan = select_images(scan_image_folder(image_root), "new")
    lt = loaded_teacher
    teacher = clip_teacher(lt.model, scan.classnames, lt.tokenizer, lt.image_size, lt.mean, lt.std)
    build_table(image_root, tmp_path / "other", teacher, scan=scan, crops_per_image=2, topk=2, progress=False)
    with pytest.raises(FDBPLError, match=r"was trained on another table"):
        run_train(
            RILTable.open(tmp_path / "other"),
            image_root,
            tmp_path / "run",
            TrainConfig(epochs=2, batch_size=8),
        )


@given(st.integers(1, 40))
def test_base_new_split_halves_the_sorted_classes(c):
    base, new = split_classes(c, "base"), split_classes(c, "new")
    assert base + new == split_classes(c, "all") == list(range(c))
    assert len(base) - len(new) in (0, 1)


def test_shots_draw_n_images_per_class_and_name_a_short_class(image_root):
    scan = scan_image_folder(image_root)
    picked = select_images(scan, "new", shots=2, seed=1)
    assert picked.classnames == scan.classnames[4:]
    assert sorted(r.label for r in picked.images) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert picked.images == select_images(scan, "new", shots=2, seed=1).images
    with pytest.raises(
        FDBPLError, match=r"shots: 4 images per class asked, but class 'black checkerboard' holds 3"
    ):
        select_images(scan, "all", shots=4)


def test_evaluation_equals_a_literal_count(table, image_root, tmp_path):
    run_train(table, image_root, tmp_path / "run", TrainConfig(epochs=1, batch_size=8))
    state = load_run(tmp_path / "run")
    student, tok = tiny_open_clip("clip", seed=5)
    scan = scan_image_folder(image_root)
    for subset in ("base", "new", "all"):
        got = evaluate_prompts(student, image_root, state, subset, tokenizer=tok, image_size=32, batch_size=5)
        keep = split_classes(len(scan.classnames), subset)
        learner = learner_for(student, [scan.classnames[c] for c in keep], state, tok)
        text = torch.nn.functional.normalize(learner()[0], dim=-1)
        correct = 0
        recs = [r for r in scan.images if r.label in keep]
        for r in recs:
            with torch.no_grad():
                f = student.encode_image(preprocess(decode_image(image_root / r.path), 32, *_openai())[None])
            correct += int(keep[int((f @ text.T).argmax())] == r.label)
        assert (got.correct, got.total) == (correct, len(recs))
    assert harmonic_mean(50.0, 100.0) == pytest.approx(200 / 3)


def _openai():
    from fdbpl.cache import OPENAI_MEAN, OPENAI_STD

    return OPENAI_MEAN, OPENAI_STD


def test_two_process_training_sees_each_image_once_and_ends_with_one_set_of_prompts(
    table, image_root, teacher_files, tmp_path
):
    config, checkpoint = teacher_files
    run_fdbpl(
        "train",
        table.path,
        image_root,
        "--student",
        config,
        "--pretrained",
        checkpoint,
        "--out",
        tmp_path / "ddp",
        "--epochs",
        2,
        "--batch-size",
        4,
        "--no-progress",
        nproc=2,
    )
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    n = table.num_images
    epochs = [e for e in lines if e.get("epoch_done")]
    assert len(epochs) == 2
    for e in epochs:
        assert (e["items"], e["item_id_sum"], e["item_id_square_sum"]) == (
            n,
            n * (n - 1) // 2,
            sum(i * i for i in range(n)),
        )
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["world_size"] == 2
