"""fdbpl.data against plain re-implementations of CoOp's and Dassl's code paths."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys
import types
from collections import defaultdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

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

# -- plain re-implementations, written from the behaviour CoOp and Dassl document ----------


def dassl_generate_fewshot(data_source, num_shots, repeat):
    """Dassl's generate_fewshot_dataset on one split, on the global ``random``."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for _label, items in tracker.items():
        if len(items) >= num_shots:
            sampled = random.sample(items, num_shots)
        elif repeat:
            sampled = random.choices(items, k=num_shots)
        else:
            sampled = items
        dataset.extend(sampled)
    return dataset


def coop_draw(train, val, num_shots, seed, repeat):
    """CoOp: train.py seeds the global generator, the dataset draws train, then val."""
    state = random.getstate()
    try:
        random.seed(seed)
        return dassl_generate_fewshot(train, num_shots, repeat), dassl_generate_fewshot(
            val, min(num_shots, 4), repeat
        )
    finally:
        random.setstate(state)


def coop_subsample(*args, subsample):
    if subsample == "all":
        return [list(a) for a in args]
    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    out = []
    for dataset in args:
        out.append(
            [
                Item(i.impath, relabeler[i.label], i.classname, i.domain)
                for i in dataset
                if i.label in selected
            ]
        )
    return out


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


@pytest.fixture
def datum_class(monkeypatch):
    """A stand-in for Dassl's Datum, importable under Dassl's module name (for pickling)."""
    name = "dassl.data.datasets.base_dataset"
    module = types.ModuleType(name)

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = name, "Datum"
    module.Datum = Datum
    for parent in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, parent, sys.modules.get(parent, types.ModuleType(parent)))
    monkeypatch.setitem(sys.modules, name, module)
    return Datum


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
