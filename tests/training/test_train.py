"""Training from a table, resuming (after kills, full disks, or with other settings), distributed
training, evaluation and the base-to-new split."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from processes import run_fdbpl
from tiny_models import tiny_open_clip

import fdbpl.train as train_module
from fdbpl.cache import RILTable, build_table, clip_teacher, scan_image_folder
from fdbpl.errors import FDBPLError
from fdbpl.evaluate import evaluate_prompts, harmonic_mean, preprocess
from fdbpl.images import decode_image
from fdbpl.prompts import DualPromptLearner
from fdbpl.run import RunFolder
from fdbpl.subsets import select_images, split_classes
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
        DualPromptLearner(tiny_open_clip("clip")[0], table.classnames).positive_context.detach(),
    )


#: PromptSRC: deep prompts in both towers, its constraints, and the Gaussian aggregation whose
#: running sums must survive the crash (mean 2.5: the weight spreads over the three epochs).
PROMPTSRC = dataclasses.replace(CONFIG, method="promptsrc", depth=2, gpa_mean=2.5, gpa_std=1.0)


@pytest.mark.parametrize("config", [CONFIG, PROMPTSRC], ids=["coop", "promptsrc"])
def test_interrupted_training_resumes_to_the_same_prompts(table, image_root, tmp_path, monkeypatch, config):
    run_train(table, image_root, tmp_path / "straight", config)
    saves = {"n": 0, "steps_after": 0}
    real_save, real_loss = RunFolder.save_checkpoint, train_module.FDBPLLoss

    def count_saves(folder, state):
        real_save(folder, state)
        saves["n"] += 1

    class CrashingLoss(real_loss):
        def forward(self, *args, **kwargs):
            if saves["n"] == 2:  # one step into epoch 3, then the machine dies
                saves["steps_after"] += 1
                if saves["steps_after"] == 2:
                    raise KeyboardInterrupt("simulated crash in epoch 3")
            return super().forward(*args, **kwargs)

    monkeypatch.setattr(RunFolder, "save_checkpoint", count_saves)
    monkeypatch.setattr(train_module, "FDBPLLoss", CrashingLoss)
    with pytest.raises(KeyboardInterrupt):
        run_train(table, image_root, tmp_path / "resumed", config)
    monkeypatch.setattr(train_module, "FDBPLLoss", real_loss)
    monkeypatch.setattr(RunFolder, "save_checkpoint", real_save)
    assert load_run(tmp_path / "resumed")["epoch"] == 2
    run_train(table, image_root, tmp_path / "resumed", config)
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    learned = [k for k in a["learner"] if k != "_extra_state"]
    assert len(learned) == (2 if config.method == "coop" else 5)
    for key in learned:
        assert torch.equal(a["learner"][key], b["learner"][key]), key
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
        learner = DualPromptLearner.from_state_dict(
            student, state["learner"], [scan.classnames[c] for c in keep], tok
        )
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
    from fdbpl.images import OPENAI_MEAN, OPENAI_STD

    return OPENAI_MEAN, OPENAI_STD


@pytest.mark.parametrize(
    "method",
    [[], ["--method", "cocoop"], ["--method", "promptsrc", "--depth", "2"]],
    ids=["coop", "cocoop", "promptsrc"],
)
def test_two_process_training_sees_each_image_once_and_ends_with_one_set_of_prompts(
    table, image_root, teacher_files, tmp_path, method
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
        *method,
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


# -- resuming after faults -------------------------------------------------------------

SHORT = dataclasses.replace(CONFIG, epochs=2)


def _log(run):
    return (run / "log.jsonl").read_text().splitlines()


def test_a_log_cut_mid_line_does_not_block_resume(table, image_root, tmp_path):
    straight = tmp_path / "straight"
    run_train(table, image_root, straight, SHORT)
    run = tmp_path / "cut"
    run_train(table, image_root, run, dataclasses.replace(SHORT, epochs=1))
    # pretend epoch 2 was under way when the disk filled: its checkpoint never came
    state = load_run(run)
    state["settings"]["config"]["epochs"] = 2
    torch.save(state, run / "checkpoint.pt")
    with open(run / "log.jsonl", "a", encoding="utf-8") as log:
        log.write('{"epoch": 1, "step": 3, "lr": 0.0')
    run_train(table, image_root, run, SHORT)
    lines = [json.loads(line) for line in _log(run)]  # every line whole
    assert [x.get("step") for x in lines] == [json.loads(x).get("step") for x in _log(straight)]


def test_an_attempt_killed_before_its_first_checkpoint_leaves_no_lines(table, image_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"epoch": 0, "step": 1, "total": 9.0}\n{"epoch": 0, "st')
    run_train(table, image_root, run, SHORT)
    steps = [json.loads(x)["step"] for x in _log(run) if "step" in json.loads(x)]
    assert steps == sorted(set(steps)) and steps[0] == 1 and len(steps) == load_run(run)["step"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(epochs=3), r"epochs: 2 -> 3.*a finished cosine schedule cannot be extended"),
        (dict(lr=0.2), r"lr: 0.05 -> 0.2"),
        (dict(lambda_neg=0.5, delta=0.2), r"lambda_neg: 1.0 -> 0.5; delta: 0.1 -> 0.2"),
    ],
)
def test_a_resume_with_other_settings_is_refused_naming_them(table, image_root, tmp_path, change, match):
    run = tmp_path / "run"
    run_train(table, image_root, run, SHORT)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(FDBPLError, match=match):
        run_train(table, image_root, run, dataclasses.replace(SHORT, **change))
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_finished_run_with_the_same_settings_trains_no_more(table, image_root, tmp_path):
    run = tmp_path / "run"
    first = run_train(table, image_root, run, SHORT)
    before = (run / "checkpoint.pt").read_bytes()
    again = run_train(table, image_root, run, dataclasses.replace(SHORT, num_workers=1))  # workers may change
    assert again.steps == first.steps and (run / "checkpoint.pt").read_bytes() == before


def test_another_student_is_refused_naming_it(table, image_root, tmp_path):
    from tiny_models import tiny_open_clip

    from fdbpl.train import train

    run = tmp_path / "run"
    student, tok = tiny_open_clip("clip", seed=5)
    common = dict(config=SHORT, tokenizer=tok, image_size=32, progress=False)
    train(table, image_root, student, run, student_description={"name": "a"}, **common)
    with pytest.raises(FDBPLError, match=r"student: \{'name': 'a'\} -> \{'name': 'b'\}"):
        train(table, image_root, student, run, student_description={"name": "b"}, **common)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("lr", float("nan"), r"lr: expected a finite number > 0"),
        ("lr", 0.0, r"lr: expected a finite number > 0"),
        ("epochs", 0, r"epochs: expected an integer >= 1"),
        ("batch_size", -1, r"batch_size: expected an integer >= 1"),
        ("alpha", float("nan"), r"alpha: expected a finite number >= 0"),
        ("delta", float("inf"), r"delta: expected a finite number"),
        ("lambda_neg", -1.0, r"lambda_neg: expected a finite number >= 0"),
        ("n_ctx", 2.5, r"n_ctx: expected an integer >= 1"),
        ("class_chunk_size", 0, r"class_chunk_size: expected an integer >= 1"),
        ("n_ctx", 16, r"n_ctx: sets the length of randomly initialised contexts, but both spaces start"),
        ("image_features", "stored", r"image_features: expected one of \['auto', 'cached', 'encode'\]"),
    ],
)
def test_bad_settings_are_refused(field, value, match):
    with pytest.raises(FDBPLError, match=match):
        TrainConfig(**{field: value})


def test_a_checkpoint_of_fdbpl_0_1_still_loads_and_resumes(table, image_root, tmp_path):
    """0.1 kept the init phrases and settings beside the learner, not in it."""
    run = tmp_path / "run"
    run_train(table, image_root, run, dataclasses.replace(SHORT, epochs=1))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    extra = state["learner"]["_extra_state"]
    state.update(inits=extra.pop("inits"), n_ctx=dict(extra["n_ctx"]), class_specific=extra["class_specific"])
    del state["settings"]
    torch.save(state, run / "checkpoint.pt")
    student, tok = tiny_open_clip("clip", seed=5)
    learner = DualPromptLearner.from_state_dict(student, load_run(run)["learner"], tokenizer=tok)
    assert learner.inits == {"positive": "a photo of a", "negative": "a photo of no"}
    assert torch.equal(learner.positive_context, state["learner"]["positive_context"])
    with pytest.raises(FDBPLError, match=r"epochs: 1 -> 2"):  # settings read from config.json
        run_train(table, image_root, run, SHORT)


def test_a_new_run_starts_from_an_authors_checkpoint_and_a_wrong_one_is_refused(table, image_root, tmp_path):
    """init_from: CoOp's own checkpoint (Dassl layout, key ``ctx``) fills the positive context
    before the first step (a tiny lr keeps it there); the negative one keeps its init phrase."""
    ctx = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "model.pth.tar-50"
    torch.save({"state_dict": {"ctx": ctx, "token_prefix": torch.zeros(3, 1, 64)}, "epoch": 50}, path)
    config = dataclasses.replace(CONFIG, epochs=1, lr=1e-9, init_from=str(path))
    run_train(table, image_root, tmp_path / "run", config)
    state = load_run(tmp_path / "run")
    torch.testing.assert_close(state["learner"]["positive_context"], ctx, rtol=0, atol=1e-6)
    fresh = DualPromptLearner(tiny_open_clip("clip", seed=5)[0], table.classnames)
    torch.testing.assert_close(
        state["learner"]["negative_context"], fresh.negative_context.detach(), rtol=0, atol=1e-6
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["init_from"] == str(path)
    torch.save({"state_dict": {"prompt_learner.ctx": ctx}, "epoch": 5}, tmp_path / "ivlp.pth.tar-5")
    wrong = dataclasses.replace(config, init_from=str(tmp_path / "ivlp.pth.tar-5"))
    with pytest.raises(FDBPLError, match=r"'prompt_learner\.ctx' has no place in a coop learner"):
        run_train(table, image_root, tmp_path / "run2", wrong)
