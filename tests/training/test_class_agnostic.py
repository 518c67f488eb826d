"""Class-agnostic training: a table over a vocabulary, per-batch class subsets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from processes import student_args, teacher_args

from fdbpl.cache import RILTable
from fdbpl.cli import main
from fdbpl.prompts import DualPromptLearner
from fdbpl.train import TrainConfig, batch_classes, class_ranking, train


@given(
    c=st.integers(5, 60),
    data=st.data(),
)
def test_batch_classes_keep_every_top_k_class_and_top_up_by_rank(c, data):
    indices = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=20))).view(-1, 1)
    ranking = torch.tensor(data.draw(st.permutations(range(c))))
    budget = data.draw(st.integers(1, c + 5))
    got = batch_classes(indices, ranking, budget).tolist()
    present = set(indices.flatten().tolist())
    assert got == sorted(got) and present <= set(got)
    assert len(got) == max(len(present), min(budget, c))
    extra = set(got) - present  # the top-ranked classes that were not in the batch
    ranked_others = [int(r) for r in ranking if int(r) not in present]
    assert extra == set(ranked_others[: len(extra)])


@pytest.fixture(scope="module")
def vocabulary_table(tmp_path_factory, image_root, teacher_files):
    tmp = tmp_path_factory.mktemp("agnostic")
    names = [f"thing number {i}" for i in range(1000)]
    (tmp / "vocab.txt").write_text("\n".join(names) + "\n")
    argv = [
        "build-cache",
        image_root,
        tmp / "t",
        *teacher_args(teacher_files),
        "--vocabulary",
        tmp / "vocab.txt",
    ]
    assert main([str(a) for a in [*argv, "--crops-per-image", 2, "--topk", 5, "--no-progress"]]) == 0
    return tmp, RILTable.open(tmp / "t"), names


def test_a_vocabulary_table_holds_the_vocabulary(vocabulary_table):
    _, table, names = vocabulary_table
    assert table.classnames == names and table.num_classes == 1000 and table.topk == 5
    ranking = class_ranking(table)
    regions = table.regions(range(len(table))).labels
    mass = torch.zeros(1000, dtype=torch.float64).index_add_(
        0, regions.indices.flatten(), regions.values.double().flatten()
    )
    assert torch.all(mass[ranking][:-1] >= mass[ranking][1:])  # by decreasing mean teacher probability


def test_training_encodes_only_each_batchs_subset(vocabulary_table, image_root, monkeypatch, tmp_path):
    _, table, _ = vocabulary_table
    import open_clip
    from tiny_models import EMBED_DIM, TEXT_CFG, VISION_CFG

    sizes = []
    forward = DualPromptLearner.forward

    def spy(self, classes=None):
        sizes.append(self.num_classes if classes is None else len(classes))
        return forward(self, classes)

    monkeypatch.setattr(DualPromptLearner, "forward", spy)
    torch.manual_seed(0)
    student = open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG).eval()
    cfg = TrainConfig(epochs=1, batch_size=8, max_classes=40)
    result = train(table, image_root, student, tmp_path / "run", config=cfg, image_size=32, progress=False)
    assert sizes and all(s == 40 for s in sizes)  # the union of 8 x Top-5 (<= 40), topped up to 40
    assert all(torch.isfinite(torch.tensor(v)) for v in result.last.values())


def test_a_class_agnostic_run_evaluates_on_any_class_names(
    vocabulary_table, image_root, teacher_files, capsys
):
    tmp, _, _ = vocabulary_table
    train_argv = ["train", tmp / "t", image_root, *student_args(teacher_files), "--out", tmp / "run"]
    assert (
        main(
            [
                str(a)
                for a in [*train_argv, "--epochs", 1, "--batch-size", 8, "--max-classes", 50, "--no-progress"]
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(tmp / "run"), str(image_root), "--classes", "all"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("learned") and 0 <= float(line.split()[1]) <= 100
