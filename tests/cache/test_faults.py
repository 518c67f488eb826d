"""Builds after kills, beside other builds, and on odd image folders; what they leave on disk."""

from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest
from tiny_models import toy_teacher

from fdbpl.cache import RILTable, TableFormatError, build_table, scan_image_folder
from fdbpl.cache.shards import LOCK, BuildLock
from fdbpl.errors import FDBPLError
from fdbpl.images import decode_image

BUILD = dict(crops_per_image=2, topk=2, shard_size=10, progress=False)


def _build(image_root, out, **extra):
    scan = scan_image_folder(image_root)
    return build_table(image_root, out, toy_teacher(len(scan.classnames)), scan=scan, **{**BUILD, **extra})


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_leftovers_of_a_killed_build_are_cleaned_and_it_resumes(image_root, tmp_path):
    """Killed while writing build.json's temporary file, or while creating a shard."""
    reference = tmp_path / "reference"
    _build(image_root, reference)
    out = tmp_path / "killed"
    out.mkdir()
    (out / ".build.json.x1y2z3.tmp").write_text('{"half": ')
    (out / "shard-00001.creating-99999").mkdir()
    (out / "shard-00001.creating-99999" / "box.npy").write_bytes(b"\x93NUMPY")
    (out / LOCK).write_text("99999\n")  # a lock file whose holder died: no lock is held
    _build(image_root, out)
    assert _files(out) == _files(reference)


def test_stale_temporary_files_beside_a_finished_table_are_removed(image_root, tmp_path):
    out = tmp_path / "t"
    _build(image_root, out)
    (out / ".manifest.json.abc.tmp").write_text("{")
    (out / "shard-00000" / ".sha256.json.abc.tmp").write_text("{")
    assert _build(image_root, out).regions_computed == 0
    assert not list(out.rglob("*.tmp"))


def test_a_second_build_on_the_same_folder_is_refused_at_once(image_root, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    with BuildLock(out):
        with pytest.raises(TableFormatError, match=rf"another build \(process {os.getpid()}\) is writing"):
            _build(image_root, out)
    _build(image_root, out)  # the lock is released with its holder
    assert not (out / LOCK).exists()


def test_a_folder_of_other_files_is_refused_and_left_alone(image_root, tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TableFormatError, match=r"not empty and holds no fdbpl table \(notes.txt is there\)"):
        _build(image_root, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_damaged_manifest_is_refused_unless_overwritten(image_root, tmp_path):
    out = tmp_path / "t"
    _build(image_root, out)
    (out / "manifest.json").write_text("{broken")
    with pytest.raises(TableFormatError, match=r"is not valid JSON.*--overwrite"):
        _build(image_root, out)
    _build(image_root, out, overwrite=True)
    RILTable.open(out, verify=True)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_permissions_of_new_files(image_root, tmp_path, umask):
    old = os.umask(umask)
    try:
        _build(image_root, tmp_path / "t")
    finally:
        os.umask(old)
    for name in ("manifest.json", "checksum.json", "shard-00000/sha256.json", "shard-00000/values.npy"):
        mode = stat.S_IMODE((tmp_path / "t" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(scale=(0.5, 0.1)), r"scale: expected 0 < MIN <= MAX <= 1, got 0.5 0.1"),
        (dict(scale=(0.0, 1.0)), r"scale: expected two finite numbers \(MIN, MAX\) > 0, got \(0.0, 1.0\)"),
        (dict(ratio=(0.0, 1.0)), r"ratio: expected two finite numbers \(MIN, MAX\) > 0"),
        (
            dict(ratio=(1.0, float("nan"))),
            r"ratio: expected two finite numbers \(MIN, MAX\) > 0, got \(1.0, nan\)",
        ),
        (dict(seed=-1), r"seed: expected an integer >= 0, got -1"),
        (dict(seed=1.5), r"seed: expected an integer >= 0, got 1.5"),
        (dict(topk=2.0), r"topk: expected an integer >= 1, got 2.0"),
        (dict(crops_per_image=0), r"crops_per_image: expected an integer >= 1, got 0"),
        (dict(num_workers=-1), r"num_workers: expected an integer >= 0, got -1"),
    ],
)
def test_bad_build_arguments_are_refused_before_anything_is_written(image_root, tmp_path, kwargs, match):
    with pytest.raises(FDBPLError, match=match):
        _build(image_root, tmp_path / "t", **kwargs)
    assert not (tmp_path / "t").exists()


def test_odd_files_are_reported_not_fatal(tmp_path):
    """Names that are not UTF-8 and dangling links are skipped and reported; the scan goes on."""
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(root / "cat" / "a.png")
    shutil.copy(root / "cat" / "a.png", os.path.join(os.fsencode(root / "cat"), b"\xff\xfe.png"))
    (root / "cat" / "gone.png").symlink_to(root / "nowhere.png")
    scan = scan_image_folder(root)
    assert [r.path for r in scan.images] == ["cat/a.png"]
    reasons = dict(scan.skipped)
    assert reasons["cat/gone.png"] == "dangling symbolic link"
    assert reasons["cat/\\xff\\xfe.png"] == "file name is not valid UTF-8"


@pytest.mark.parametrize("level", [0, 257, 32768, 65535])
def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path, level):
    from PIL import Image

    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 6), level, dtype=np.uint16)).save(path)
    image = decode_image(path)
    assert image.shape == (3, 4, 6)
    assert int(image.min()) == int(image.max()) == round(level / 257)


@pytest.mark.parametrize(
    ("folders", "match"),
    [(["cat", "Cat"], r"case-colliding class names 'Cat' and 'cat'"), (["sea_lion", "sea lion"], "repeated")],
)
def test_class_names_that_prompts_cannot_tell_apart_are_refused(tmp_path, folders, match):
    from PIL import Image

    for folder in folders:
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "a.png")
    with pytest.raises(FDBPLError, match=match):
        scan_image_folder(tmp_path)
