"""fdbpl.data against plain re-implementations of CoOp's and Dassl's code paths."""

from __future__ import annotations

import json
import os
import pickle
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from references import coop_draw, coop_subsample

from fdbpl.data import (
    Item,
    PickleRefusedError,
    SplitFileError,
    coop_classname,
    dassl_fewshot,
    read_fewshot_pickle,
    read_split_json,
    subsample_classes,
)
from fdbpl.errors import FDBPLError

labels_st = st.lists(st.integers(0, 9), min_size=0, max_size=60)


def items_of(labels, prefix="img"):
    return [Item(f"{prefix}{i}.jpg", y, f"class_{y}") for i, y in enumerate(labels)]


@given(train=labels_st, val=labels_st, k=st.integers(1, 20), seed=st.integers(0, 2**31), repeat=st.booleans())
def test_fewshot_draws_are_dassls(train, val, k, seed, repeat):
    train_items, val_items = items_of(train), items_of(val, "val")
    assert dassl_fewshot(train_items, val_items, k, seed, repeat) == coop_draw(
        train_items, val_items, k, seed, repeat
    )


@given(train=labels_st, k=st.integers(1, 8), seed=st.integers(0, 100))
def test_fewshot_draw_keeps_at_most_k_per_class_and_whole_small_classes(train, k, seed):
    items = items_of(train)
    drawn, _ = dassl_fewshot(items, [], k, seed)
    assert len(set(drawn)) == len(drawn) and set(drawn) <= set(items)
    for label in set(train):
        assert sum(i.label == label for i in drawn) == min(k, train.count(label))
    state = random.getstate()
    dassl_fewshot(items, [], k, seed)
    assert random.getstate() == state  # the global generator is untouched


def test_other_seeds_draw_other_images():
    items = items_of([c for c in range(5) for _ in range(30)])
    draws = {tuple(i.impath for i in dassl_fewshot(items, [], 4, seed)[0]) for seed in range(1, 6)}
    assert len(draws) == 5


@given(labels=labels_st, subsample=st.sampled_from(["all", "base", "new"]))
def test_subsample_classes_is_coops(labels, subsample):
    train, test = items_of(labels), items_of(list(reversed(labels)), "t")
    assert subsample_classes(train, test, subsample=subsample) == coop_subsample(
        train, test, subsample=subsample
    )


def test_subsample_refuses_an_unknown_subset_and_names_are_normalised():
    with pytest.raises(FDBPLError, match="subsample: expected one of"):
        subsample_classes([], subsample="novel")
    assert coop_classname("american_pit_bull_terrier") == "american pit bull terrier"


# -- split files --------------------------------------------------------------------------


def test_split_file_is_read_as_coop_reads_it(tmp_path):
    split = {
        "train": [["american_bulldog/a.jpg", 0, "american_bulldog"], ["b/c.jpg", 1, "b"]],
        "val": [["b/d.jpg", 1, "b"]],
        "test": [],
    }
    path = tmp_path / "split_zhou_OxfordPets.json"
    path.write_text(json.dumps(split))
    got = read_split_json(path, tmp_path / "images")
    assert got["train"][0] == Item(
        os.path.join(str(tmp_path / "images"), "american_bulldog/a.jpg"), 0, "american_bulldog"
    )
    assert [len(got[s]) for s in ("train", "val", "test")] == [2, 1, 0]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "is not a JSON split file"),
        ('{"train": [], "val": []}', "must map 'train', 'val' and 'test'"),
        (
            '{"train": [["a.jpg", "0", "cat"]], "val": [], "test": []}',
            r"train\[0\] is \['a.jpg', '0', 'cat'\]",
        ),
        ('{"train": [], "val": [["/abs/a.jpg", 0, "cat"]], "test": []}', r"val\[0\]"),
        ('{"train": [], "val": [], "test": [["a.jpg", 0]]}', r"test\[0\]"),
    ],
)
def test_bad_split_files_name_the_entry(tmp_path, content, match):
    (tmp_path / "s.json").write_text(content)
    with pytest.raises(SplitFileError, match=match):
        read_split_json(tmp_path / "s.json", tmp_path)
    with pytest.raises(SplitFileError, match="does not exist"):
        read_split_json(tmp_path / "missing.json", tmp_path)


# -- cached few-shot draws: pickles read without running code ---------------------------


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_dassl_fewshot_pickle_is_read(tmp_path, datum_class, protocol):
    data = {
        "train": [datum_class(f"/data/pets/images/{i}.jpg", i % 3, 0, f"class_{i % 3}") for i in range(7)],
        "val": [datum_class("/data/pets/images/v.jpg", 2, 0, "class_2")],
    }
    path = tmp_path / "shot_16-seed_1.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    got = read_fewshot_pickle(path)
    assert got["train"] == [Item(f"/data/pets/images/{i}.jpg", i % 3, f"class_{i % 3}") for i in range(7)]
    assert got["val"] == [Item("/data/pets/images/v.jpg", 2, "class_2")]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, datum_class):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": [_Payload(marker)], "val": []}))
    with pytest.raises(
        PickleRefusedError, match=r"names (posix|os|nt)\.mkdir; only Dassl's Datum is allowed"
    ):
        read_fewshot_pickle(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the check can fail: a plain unpickler runs it
    assert marker.exists()


def test_other_classes_and_shapes_are_refused(tmp_path, datum_class):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"train": [Item("a", 0, "b")], "val": []}))
    with pytest.raises(PickleRefusedError, match=r"fdbpl\.data\.items\.Item"):
        read_fewshot_pickle(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(PickleRefusedError, match="expected"):
        read_fewshot_pickle(path)
    path.write_bytes(pickle.dumps({"train": [datum_class("a", 0, 0, "c")], "val": []})[:-5])
    with pytest.raises(FDBPLError, match="not a readable pickle"):
        read_fewshot_pickle(path)
