"""The student's image features stored per region: what is stored, that it is the replayed
crop's feature, that it belongs to one student, and that training uses it."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from tiny_models import EMBED_DIM, TEXT_CFG, VISION_CFG, toy_teacher

from fdbpl.cache import (
    RegionDataset,
    RILTable,
    TableFormatError,
    build_table,
    clip_student_features,
    image_tower_digest,
    scan_image_folder,
)
from fdbpl.cache.storage import json_bytes
from fdbpl.errors import FDBPLError
from fdbpl.images import InputRecipe, render_crop
from fdbpl.train import TrainConfig, train

#: The toy teacher's recipe (16 px, mean and std 0.5); the student's differs unless asked.
TEACHER_RECIPE = InputRecipe(16, (0.5,) * 3, (0.5,) * 3)
STUDENT_RECIPE = InputRecipe(32, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def tiny_student(seed: int = 0, image_size: int = 32) -> torch.nn.Module:
    import open_clip

    torch.manual_seed(seed)
    vision = dict(VISION_CFG, image_size=image_size)
    return open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=vision, text_cfg=TEXT_CFG).eval()


def build(image_root, out, student_model, recipe, **kwargs):
    scan = scan_image_folder(image_root)
    student = clip_student_features(student_model, recipe, {"name": "tiny", "pretrained": "none"})
    options = dict(crops_per_image=6, topk=3, batch_size=8, shard_size=4, progress=False)
    build_table(
        image_root,
        out,
        toy_teacher(len(scan.classnames)),
        student=student,
        scan=scan,
        **{**options, **kwargs},
    )
    return RILTable.open(out)


@pytest.fixture(scope="module")
def student():
    return tiny_student()


@pytest.fixture(scope="module")
def table(tmp_path_factory, image_root, student):
    return build(image_root, tmp_path_factory.mktemp("features") / "table", student, STUDENT_RECIPE)


def replayed_features(table, image_root, model, recipe, ids):
    """The student's normalised feature of each region, re-rendered from its stored box and flip."""
    records = table.image_records
    regions = table.regions(ids)
    from fdbpl.cache.scan import read_image

    crops = [
        render_crop(read_image(image_root, records[i]), box, bool(flip), recipe.size, recipe.mean, recipe.std)
        for i, box, flip in zip(regions.image_index, regions.boxes, regions.flips)
    ]
    with torch.no_grad():
        return F.normalize(model.encode_image(torch.stack(crops)), dim=-1)


# float16 rounding of a unit vector's entries (|x| < 1): at most half a unit in the last
# place, 2**-12, plus the float32 noise of another batch composition
FLOAT16_ROUNDING = 2**-12 + 1e-5


@pytest.mark.parametrize("same_recipe", [False, True])
def test_stored_features_are_the_replayed_crops_features(tmp_path, image_root, student, same_recipe):
    model, recipe = (
        (tiny_student(image_size=16), TEACHER_RECIPE) if same_recipe else (student, STUDENT_RECIPE)
    )
    table = build(image_root, tmp_path / "t", model, recipe)
    ids = np.arange(len(table))
    stored = table.regions(ids).features
    assert stored.dtype == torch.float16 and stored.shape == (len(table), EMBED_DIM)
    want = replayed_features(table, image_root, model, recipe, ids)
    torch.testing.assert_close(stored.float(), want, rtol=0, atol=FLOAT16_ROUNDING)
    # the check can fail: the same crops rendered with the other model's recipe are far off
    swapped = (
        (STUDENT_RECIPE.mean, STUDENT_RECIPE.std)
        if same_recipe
        else (TEACHER_RECIPE.mean, TEACHER_RECIPE.std)
    )
    other = InputRecipe(recipe.size, *swapped)
    wrong = replayed_features(table, image_root, model, other, ids)
    assert float((stored.float() - wrong).abs().max()) > 50 * FLOAT16_ROUNDING


def test_table_records_the_student_and_the_column(table, student):
    entry = table.student
    assert table.has_features
    assert entry["feature_dim"] == EMBED_DIM and entry["image_size"] == 32
    assert entry["image_tower_sha256"] == image_tower_digest(student)
    assert entry["name"] == "tiny"
    assert table.manifest["dtypes"]["features"] == "float16"
    assert table.bytes_per_region == 4 * 2 + 1 + 3 * 2 + 3 * 2 + 2 + EMBED_DIM * 2
    row = table.read(7)
    np.testing.assert_array_equal(row["features"], table.regions([7]).features[0].numpy())
    assert "features=True" in repr(table)


def test_a_rebuilt_shard_has_the_same_bytes(tmp_path, table, image_root, student):
    copy_dir = tmp_path / "t"
    shutil.copytree(table.path, copy_dir)
    shutil.rmtree(copy_dir / "shard-00001")
    (copy_dir / "manifest.json").unlink()
    (copy_dir / "build.json").write_bytes(
        json_bytes({k: v for k, v in table.manifest.items() if k != "shards"})
    )
    again = build(image_root, copy_dir, student, STUDENT_RECIPE)
    for name in ("features.npy", "values.npy", "sha256.json"):
        assert (copy_dir / "shard-00001" / name).read_bytes() == (
            table.path / "shard-00001" / name
        ).read_bytes()
    assert again.manifest == table.manifest


def test_dataset_items_carry_features_and_read_no_image(table, tmp_path):
    data = RegionDataset(table, None, crops_per_image=2)  # no image folder needed
    item = data[3]
    assert "image" not in item
    assert item["features"].shape == (2, EMBED_DIM) and item["features"].dtype == torch.float16
    np.testing.assert_array_equal(item["features"].numpy(), table.regions(item["region"]).features.numpy())
    batch = next(
        iter(torch.utils.data.DataLoader(RegionDataset(table, tmp_path / "nothing here"), batch_size=4))
    )
    assert batch["features"].shape == (4, EMBED_DIM)


def test_dataset_can_still_replay_images(table, image_root):
    data = RegionDataset(table, image_root, recipe=STUDENT_RECIPE, features=False)
    item = data[0]
    assert "features" not in item and item["image"].shape == (3, 32, 32)
    with pytest.raises(FDBPLError, match="root: the image folder is needed"):
        RegionDataset(table, None, features=False)


def test_features_on_a_table_without_them_are_refused(tmp_path, image_root, student):
    scan = scan_image_folder(image_root)
    out = tmp_path / "plain"
    build_table(
        image_root,
        out,
        toy_teacher(len(scan.classnames)),
        scan=scan,
        crops_per_image=2,
        topk=2,
        progress=False,
    )
    plain = RILTable.open(out)
    assert not plain.has_features and plain.student is None and plain.regions([0]).features is None
    assert "image" in RegionDataset(plain, image_root, image_size=16)[0]
    with pytest.raises(FDBPLError, match=r"features: the table .* stores no student image features"):
        RegionDataset(plain, image_root, features=True)
    with pytest.raises(TableFormatError, match="stores no student image features"):
        plain.check_student(student)


def test_another_student_or_recipe_is_refused(table, student):
    table.check_student(student, STUDENT_RECIPE)
    table.check_student(copy.deepcopy(student))  # the same weights in another object
    with pytest.raises(TableFormatError, match=r"belong to another student \(tiny, none; image tower sha256"):
        table.check_student(tiny_student(seed=1))
    with pytest.raises(TableFormatError, match="computed at size 32"):
        table.check_student(student, InputRecipe(32, (0.5,) * 3, (0.5,) * 3))


@given(which=st.integers(0, 10_000), ulps=st.sampled_from([1, -1]))
def test_image_tower_digest_sees_one_ulp_anywhere(student, which, ulps):
    changed = copy.deepcopy(student)
    params = list(changed.visual.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])
    i = which % flat.numel()
    for p in params:
        if i < p.numel():
            with torch.no_grad():
                x = p.view(-1)[i]
                p.view(-1)[i] = torch.nextafter(x, torch.tensor(ulps * float("inf")))
            break
        i -= p.numel()
    assert image_tower_digest(changed) != image_tower_digest(student)
    # the text tower is not part of it
    text_changed = copy.deepcopy(student)
    with torch.no_grad():
        text_changed.token_embedding.weight.add_(1.0)
    assert image_tower_digest(text_changed) == image_tower_digest(student)


def test_image_tower_digest_sees_the_dtype(student):
    assert image_tower_digest(copy.deepcopy(student).half()) != image_tower_digest(student)
    with pytest.raises(FDBPLError, match=r"has no image tower at \.visual"):
        image_tower_digest(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update(feature_dim="64"), "feature_dim"),
        (lambda s: s.update(feature_dim=0), "feature_dim"),
        (lambda s: s.pop("image_tower_sha256"), "image_tower_sha256"),
        (lambda s: s.update(image_size=-2), "image_size"),
        (lambda s: s.update(feature_dim=EMBED_DIM + 1), r"features.npy holds float16\[\d+, 64\]"),
    ],
)
def test_a_damaged_student_entry_is_refused(tmp_path, table, edit, match):
    copy_dir = tmp_path / "t"
    shutil.copytree(table.path, copy_dir)
    manifest = json.loads((copy_dir / "manifest.json").read_text())
    edit(manifest["student"])
    (copy_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TableFormatError, match=match):
        RILTable.open(copy_dir)


def _train(table, image_root, student, run, how, **kwargs):
    cfg = TrainConfig(epochs=2, batch_size=4, image_features=how, **kwargs)
    return train(table, image_root, student, run, config=cfg, recipe=STUDENT_RECIPE, progress=False)


def test_training_from_stored_features_follows_training_from_images(tmp_path, table, image_root, student):
    cached = _train(table, image_root, student, tmp_path / "cached", "cached")
    encoded = _train(table, image_root, student, tmp_path / "encoded", "encode")
    auto = _train(table, image_root, student, tmp_path / "auto", "auto", class_chunk_size=2)
    assert cached.steps == encoded.steps > 0
    a, b, c = (
        torch.load(r.run / "checkpoint.pt", weights_only=True)["learner"] for r in (cached, encoded, auto)
    )
    for key in ("positive_context", "negative_context"):
        # the same run up to the float16 rounding of the features
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-3 * float(b[key].abs().max()))
        # auto took the stored ones: the same run (chunked: float32 round-off), not the encoded one
        moved = float((a[key] - b[key]).norm())
        assert float((c[key] - a[key]).norm()) < min(0.1 * moved, 1e-5 * float(a[key].norm()))
    for k, v in encoded.last.items():
        assert abs(cached.last[k] - v) <= 1e-2 * max(1.0, abs(v)), k


def test_training_refuses_another_students_features(tmp_path, table, image_root):
    other = tiny_student(seed=1)
    with pytest.raises(TableFormatError, match="belong to another student"):
        _train(table, image_root, other, tmp_path / "run", "auto")
    _train(table, image_root, other, tmp_path / "run2", "encode")  # encoding the images is fine
