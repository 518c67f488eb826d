"""Where a table's images came from (the manifest's source) and check_table_draw: a table is
accepted for exactly the training set it was built on, and anything else is named."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import toy_teacher

from fdbpl.cache import RILTable, TableFormatError, build_table
from fdbpl.cache.provenance import check_table_draw, describe_source
from fdbpl.cache.scan import scan_image_folder, scan_split
from fdbpl.cache.summary import table_report
from fdbpl.data import DatasetSplits, Item
from fdbpl.errors import TableMismatchError

SOURCE = {"dataset": "OxfordPets", "split_file": "oxford_pets/split_zhou_OxfordPets.json", "shots": 2,
          "seed": 1, "subset": "base", "repeat": False}  # fmt: skip


@pytest.fixture(scope="module")
def drawn(image_root, tmp_path_factory):
    """A table of a 'draw': the first two images of each class of the image folder, built as
    build-cache --dataset builds it (a scan of the dataset's items, with its source)."""
    full = scan_image_folder(image_root, check=False)
    names = [n.replace(" ", "_") for n in full.classnames]
    items = [
        Item(str(image_root / r.path), r.label, names[r.label])
        for r in full.images
        if r.path.endswith(("0.png", "1.png"))
    ]
    data = DatasetSplits("OxfordPets", items, [], [], names, dict(SOURCE))
    scan = scan_split(data, image_root, "train", check=False)
    out = tmp_path_factory.mktemp("drawn") / "table"
    build_table(
        image_root, out, toy_teacher(len(names)), scan=scan, crops_per_image=2, topk=2, progress=False
    )
    return RILTable.open(out), items, names


def test_the_source_is_recorded_printed_and_accepted(drawn, image_root):
    table, items, names = drawn
    assert table.manifest["source"] == {**SOURCE, "split": "train"}
    assert (
        "source      OxfordPets train, 2-shot draw, seed 1, base classes (read from oxford_pets/split_zhou"
        in (table_report(table))
    )
    pairs = [(i.impath, i.classname) for i in items]
    check_table_draw(table, image_root, pairs[::-1], names, {"dataset": "OxfordPets", "shots": 2, "seed": 1})
    assert describe_source(None).startswith("an image folder")


@given(data=st.data())
def test_any_other_training_set_is_refused_naming_the_first_difference(drawn, image_root, data):
    table, items, names = drawn
    pairs = [(i.impath, i.classname) for i in items]
    k = data.draw(st.integers(0, len(pairs) - 1), label="item")
    change = data.draw(st.sampled_from(["drop", "add", "relabel", "twice", "names", "seed", "subset"]))
    source, classnames = {"dataset": "OxfordPets", "shots": 2, "seed": 1, "subset": "base"}, list(names)
    if change == "drop":
        missing, pairs = pairs[k], pairs[:k] + pairs[k + 1 :]
        match = rf"holds {re.escape(str(Path(missing[0]).resolve()))}, which is not in this training set"
    elif change == "add":
        extra = str(image_root / sorted(p.name for p in image_root.iterdir())[0] / "002.png")
        pairs = [*pairs, (extra, pairs[0][1])]
        match = "does not hold .*002.png, an image of this training set"
    elif change == "relabel":
        other = names[(names.index(pairs[k][1]) + 1) % len(names)]
        pairs[k] = (pairs[k][0], other)
        match = "is labelled .* in the table, .* in this training set"
    elif change == "twice":
        pairs = [*pairs, pairs[k]]
        match = "is drawn twice"
    elif change == "names":
        classnames[k % len(names)] = "another class"
        match = f"class {k % len(names)} is .* in the table, 'another class' here"
    else:
        source[change] = 2 if change == "seed" else "new"
        match = f"was drawn for {change} .*; this run's {change} is"
    with pytest.raises(TableMismatchError, match=match):
        check_table_draw(table, image_root, pairs, classnames, source)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update(seed="1"), "source field 'seed' missing or not a int"),
        (lambda s: s.pop("dataset"), "source field 'dataset' missing"),
        (lambda s: s.update(repeat=0), "source field 'repeat' missing or not a bool"),
        (lambda s: s.update(split_file="../../etc/passwd"), "leaves the image folder"),
    ],
)
def test_a_malformed_source_is_refused(drawn, tmp_path, edit, match):
    table = drawn[0]
    copy = tmp_path / "t"
    shutil.copytree(table.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest["source"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TableFormatError, match=match):
        RILTable.open(copy)
