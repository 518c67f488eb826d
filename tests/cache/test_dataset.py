"""RegionDataset: per-epoch region draws, batching into SparseSoftLabels, bad roots."""

from __future__ import annotations

import shutil

import pytest
import torch

from fdbpl.cache import RegionDataset, RILTable, build_table, clip_teacher
from fdbpl.errors import FDBPLError
from fdbpl.sparsify import SparseSoftLabels


@pytest.fixture(scope="module")
def table(tmp_path_factory, image_root, loaded_teacher):
    from fdbpl.cache import scan_image_folder

    scan = scan_image_folder(image_root)
    lt = loaded_teacher
    teacher = clip_teacher(lt.model, scan.classnames, lt.tokenizer, lt.image_size, lt.mean, lt.std)
    out = tmp_path_factory.mktemp("ds") / "table"
    build_table(
        image_root, out, teacher, crops_per_image=5, topk=4, strategy="ms", batch_size=10, progress=False
    )
    return RILTable.open(out)


def test_items_follow_the_epoch_and_stay_in_their_image(table, image_root):
    data = RegionDataset(table, image_root, image_size=24, crops_per_image=3, length=2 * table.num_images)
    assert len(data) == 2 * table.num_images
    first = [data.region_ids(i).tolist() for i in range(len(data))]
    assert first == [data.region_ids(i).tolist() for i in range(len(data))]  # deterministic
    for i, ids in enumerate(first):
        assert len(set(ids)) == 3
        assert {r // 5 for r in ids} == {i % table.num_images}
    data.set_epoch(1)
    assert [data.region_ids(i).tolist() for i in range(len(data))] != first
    item = data[4]
    assert item["image"].shape == (3, 3, 24, 24)
    assert item["region"].tolist() == data.region_ids(4).tolist()
    assert bool((item["label"] == table.image_labels[4]).all())


def test_a_dataloader_batch_becomes_sparse_labels(table, image_root):
    data = RegionDataset(table, image_root, image_size=16)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=6)))
    assert batch["image"].shape == (6, 3, 16, 16)
    labels = SparseSoftLabels.from_batch(batch, table.num_classes)
    want = table.regions(batch["region"]).labels
    torch.testing.assert_close(labels.to_dense(), want.to_dense())
    torch.testing.assert_close(batch["weight"], table.regions(batch["region"]).weights)


def test_bad_roots_and_counts(table, image_root, tmp_path):
    with pytest.raises(FDBPLError, match=r"crops_per_image: expected 1 <= n <= 5"):
        RegionDataset(table, image_root, crops_per_image=6)
    partial = tmp_path / "img"
    shutil.copytree(image_root, partial)
    (partial / table.image_paths[3]).unlink()
    with pytest.raises(
        FDBPLError,
        match=rf"root: 1 of the table's {table.num_images} images are not under .* e.g. {table.image_paths[3]}",
    ):
        RegionDataset(table, partial)


def test_tables_compare_class_names_as_coop_reads_them(table):
    underscored = [n.replace(" ", "_") for n in table.classnames]
    assert any("_" in n for n in underscored)
    RILTable.open(table.path, classnames=underscored)  # Dassl's names match the table's
    with pytest.raises(FDBPLError, match="other class names"):
        RILTable.open(table.path, classnames=underscored, normalize_classnames=False)
