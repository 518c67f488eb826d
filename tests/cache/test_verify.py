"""Tables are verified by default where they are used for training: every tampering that
opening alone lets through (a flipped byte in a column's data, a class id changed to another
valid one, a column linked to another shard's, an edited manifest, another student's
features) is refused by :class:`RegionDataset` and :func:`fdbpl.train.train`, naming the
file; ``verify=False`` is the explicit opt-out; a table is read once per process."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import EMBED_DIM, TEXT_CFG, VISION_CFG, toy_teacher

from fdbpl.cache import (
    RegionDataset,
    RILTable,
    StudentFeatures,
    TableFormatError,
    build_table,
    scan_image_folder,
)
from fdbpl.images import InputRecipe
from fdbpl.train import TrainConfig, train

RECIPE = InputRecipe(32)


def random_student(seed: int) -> StudentFeatures:
    gen = torch.Generator().manual_seed(seed)
    return StudentFeatures(
        lambda crops: torch.randn(len(crops), 8, generator=gen),
        RECIPE,
        8,
        {"name": "random", "image_tower_sha256": f"{seed:064x}"},
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory, image_root):
    """The same crops built twice, with two students' features; shards of equal size."""
    scan = scan_image_folder(image_root)
    out = {}
    for seed in (0, 1):
        out[seed] = tmp_path_factory.mktemp("verify") / "table"
        build_table(
            image_root,
            out[seed],
            toy_teacher(len(scan.classnames)),
            student=random_student(seed),
            scan=scan,
            crops_per_image=3,
            topk=2,
            strategy="ms",
            shard_size=len(scan.images) // 2,
            progress=False,
        )
    return out


def _flip_last_byte(column):
    raw = bytearray(column.read_bytes())
    raw[-1] ^= 0x01
    column.write_bytes(bytes(raw))


def _other_class_id(column):
    ids = np.load(column)
    ids[0, 0] = (int(ids[0, 0]) + 1) % 3  # another id of the table's classes, still in range
    np.save(column, ids)


def _link_to_other_shard(column):
    column.unlink()
    os.symlink(column.parent.parent / "shard-00001" / column.name, column)


def _edit_strategy(table):
    manifest = json.loads((table / "manifest.json").read_text())
    manifest["strategy"] = "mr"
    (table / "manifest.json").write_text(json.dumps(manifest))


TAMPERING = {
    "a byte of values.npy": lambda t, other: _flip_last_byte(t / "shard-00000" / "values.npy"),
    "a byte of weight.npy": lambda t, other: _flip_last_byte(t / "shard-00000" / "weight.npy"),
    "a byte of box.npy": lambda t, other: _flip_last_byte(t / "shard-00001" / "box.npy"),
    "a byte of features.npy": lambda t, other: _flip_last_byte(t / "shard-00001" / "features.npy"),
    "a class id": lambda t, other: _other_class_id(t / "shard-00000" / "indices.npy"),
    "a column linked to another shard's": lambda t, other: _link_to_other_shard(
        t / "shard-00000" / "weight.npy"
    ),
    "the manifest's strategy": lambda t, other: _edit_strategy(t),
    "another student's features": lambda t, other: [
        shutil.copyfile(other / s / "features.npy", t / s / "features.npy")
        for s in ("shard-00000", "shard-00001")
    ],
}


@settings(max_examples=len(TAMPERING) * 2, deadline=None)
@given(how=st.sampled_from(sorted(TAMPERING)))
def test_every_tampering_that_opens_is_refused_by_default(tables, image_root, tmp_path_factory, how):
    table = tmp_path_factory.mktemp("tampered") / "t"
    shutil.copytree(tables[0], table, symlinks=True)
    TAMPERING[how](table, tables[1])
    opened = RILTable.open(table)  # opening reads headers only: it passes
    RegionDataset(opened, image_root, recipe=RECIPE, verify=False)  # the opt-out trusts it
    with pytest.raises(
        TableFormatError, match=r"differs from (its recorded SHA-256|the manifest's checksums)"
    ):
        RegionDataset(opened, image_root, recipe=RECIPE)


def test_a_table_is_read_once_per_process_until_a_file_changes(tables, tmp_path):
    table = tmp_path / "t"
    shutil.copytree(tables[0], table)
    opened = RILTable.open(table)
    assert opened.verify() is True
    assert opened.verify() is False and RILTable.open(table).verify() is False  # any object, same files
    assert opened.verify(force=True) is True
    column = table / "shard-00000" / "weight.npy"
    stat = column.stat()
    os.utime(column, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched, same bytes
    assert opened.verify() is True
    _flip_last_byte(column)
    with pytest.raises(TableFormatError, match=r"weight\.npy differs from its recorded SHA-256"):
        opened.verify()
    with pytest.raises(TableFormatError, match=r"weight\.npy differs"):
        opened.verify()  # a failed verification is not remembered as a pass


def test_training_verifies_first_and_can_be_told_not_to(tables, image_root, tmp_path):
    import open_clip

    table = tmp_path / "t"
    shutil.copytree(tables[0], table)
    _other_class_id(table / "shard-00000" / "indices.npy")
    student = open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=VISION_CFG, text_cfg=TEXT_CFG).eval()
    cfg = TrainConfig(epochs=1, batch_size=4, image_features="encode")
    run = tmp_path / "run"
    with pytest.raises(TableFormatError, match=r"indices\.npy differs from its recorded SHA-256"):
        train(RILTable.open(table), image_root, student, run, config=cfg, recipe=RECIPE, progress=False)
    assert not run.exists()  # refused before the run folder is made
    result = train(
        RILTable.open(table),
        image_root,
        student,
        run,
        config=cfg,
        recipe=RECIPE,
        progress=False,
        verify=False,
    )
    assert result.steps > 0
