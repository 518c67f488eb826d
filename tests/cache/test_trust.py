"""The table is a trust boundary: tampered, damaged or hostile tables are refused, naming the
field or file; ``verify`` finds a single flipped byte anywhere; replayed images are the built ones."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import toy_teacher

from fdbpl.cache import RegionDataset, RILTable, TableFormatError, build_table, scan_image_folder
from fdbpl.cache.manifest import list_hash
from fdbpl.images import decode_image


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory, image_root):
    out = tmp_path_factory.mktemp("trust") / "table"
    scan = scan_image_folder(image_root)
    build_table(
        image_root,
        out,
        toy_teacher(len(scan.classnames)),
        scan=scan,
        crops_per_image=3,
        topk=2,
        strategy="ms",
        shard_size=10,
        progress=False,
    )
    return out


@pytest.fixture
def copy(table_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(table_dir, target)
    return target


def edit_manifest(table: Path, change, rehash: bool = False) -> None:
    """Change the manifest; with ``rehash`` also recompute the list hashes, as an attacker would."""
    path = table / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    if rehash:
        manifest["classnames_sha256"] = list_hash(manifest["classnames"])
        manifest["images_sha256"] = list_hash(
            [[r["path"], r["width"], r["height"]] for r in manifest["images"]]
        )
    path.write_text(json.dumps(manifest))


def _set_image_path(path: str):
    def change(m):
        m["images"][0]["path"] = path

    return change


def _set(key, value):
    def change(m):
        m[key] = value

    return change


def _shard_field(key, value, index=0):
    def change(m):
        m["shards"][index][key] = value

    return change


TAMPERED = [
    (_set("classnames", None), False, r"field 'classnames' missing or not a list"),
    (
        lambda m: m["classnames"].__setitem__(0, "zebra"),
        False,
        r"classnames do not match their stored classnames_sha256",
    ),
    (_set_image_path("cyan_cross/999.png"), False, r"images do not match their stored images_sha256"),
    (_set_image_path("/etc/passwd"), True, r"images\[0\]: path '/etc/passwd' is absolute"),
    (
        _set_image_path("../../etc/passwd"),
        True,
        r"images\[0\]: path '../../etc/passwd' leaves the image folder",
    ),
    (_set_image_path("C:\\Windows\\win.ini"), True, r"is absolute"),
    (_shard_field("name", "../other/shard-00000"), False, r"shards\[0\] has name '../other/shard-00000'"),
    (
        lambda m: m["shards"].__setitem__(1, dict(m["shards"][0])),
        False,
        r"shards\[1\] has name 'shard-00000'",
    ),
    (_shard_field("num_images", 10**9), False, r"shards\[0\] has num_images"),
    (_set("crops_per_image", 0), False, r"crops_per_image 0 is not a positive count"),
    (_set("topk", 99), False, r"topk 99 outside \[1, 8\]"),
    (_set("topk", True), False, r"field 'topk' missing or not a int"),
    (lambda m: m.pop("seed"), False, r"field 'seed' missing"),
    (lambda m: m["dtypes"].__setitem__("values", "object"), False, r"dtype 'object' of column 'values'"),
    (lambda m: m["dtypes"].__setitem__("box", "complex128"), False, r"dtype 'complex128' of column 'box'"),
    (lambda m: m["images"][0].__setitem__("label", 8), False, r"images\[0\]: label 8 is not a class id"),
    (lambda m: m["images"][0].__setitem__("width", -4), True, r"images\[0\]: width -4 is not a size"),
    (_set("schema_version", 99), False, r"schema version 99"),
]


@pytest.mark.parametrize(("change", "rehash", "match"), TAMPERED)
def test_a_tampered_manifest_is_refused_naming_the_field(copy, change, rehash, match):
    edit_manifest(copy, change, rehash)
    with pytest.raises(TableFormatError, match=match):
        RILTable.open(copy)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json", r"manifest.json is not valid JSON"),
        (b'{"a": "\xff\xfe"}', r"manifest.json is not UTF-8 text"),
        (b"[1, 2, 3]", r"expected a JSON object, got list"),
        (b"", r"manifest.json is not valid JSON"),
    ],
)
def test_a_malformed_manifest_is_refused(copy, content, match):
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(TableFormatError, match=match):
        RILTable.open(copy)


def _open_in_thread(path, **kwargs):
    """RILTable.open in a thread, so that a hang fails the test instead of blocking it."""
    result: dict[str, object] = {}

    def target():
        try:
            result["table"] = RILTable.open(path, **kwargs)
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "RILTable.open hung"
    return result


def test_a_fifo_column_is_refused_without_hanging(copy):
    column = copy / "shard-00000" / "values.npy"
    column.unlink()
    os.mkfifo(column)
    result = _open_in_thread(copy)
    assert isinstance(result.get("error"), TableFormatError), result
    assert "values.npy is a FIFO" in str(result["error"])


def test_a_fortran_order_column_is_refused(copy):
    column = copy / "shard-00000" / "values.npy"
    values = np.load(column)
    np.save(column, np.asfortranarray(values))
    with pytest.raises(TableFormatError, match=r"values.npy is stored in Fortran order"):
        RILTable.open(copy)


def test_a_link_out_of_the_image_folder_is_refused(table_dir, image_root, tmp_path):
    """An image that is a symbolic link to a file outside the folder is not read."""
    table = RILTable.open(table_dir)
    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    outside = tmp_path / "secret.png"
    shutil.copy(images / table.image_paths[0], outside)
    (images / table.image_paths[0]).unlink()
    (images / table.image_paths[0]).symlink_to(outside)
    data = RegionDataset(table, images, image_size=16)
    with pytest.raises(TableFormatError, match=r"resolves outside the image folder"):
        data[0]


def test_another_image_under_the_same_name_and_size_is_refused(table_dir, image_root, tmp_path):
    from PIL import Image

    table = RILTable.open(table_dir)
    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    first = images / table.image_paths[0]
    pixels = decode_image(first).permute(1, 2, 0).numpy()
    Image.fromarray(255 - pixels).save(first)  # same name, same size, other content
    data = RegionDataset(table, images, image_size=16)
    data[1]  # the others still replay
    with pytest.raises(TableFormatError, match=r"is not the image the table was built on"):
        data[0]


def test_boxes_outside_their_image_are_refused(copy, image_root):
    column = copy / "shard-00000" / "box.npy"
    boxes = np.load(column)
    boxes[:3] = [60, 60, 50, 50]  # rows of image 0, past its 72 x 60 pixels
    np.save(column, boxes)
    with pytest.raises(TableFormatError, match=r"box.npy differs from its recorded SHA-256"):
        RegionDataset(RILTable.open(copy), image_root, image_size=16)  # verified by default
    data = RegionDataset(RILTable.open(copy), image_root, image_size=16, verify=False)
    with pytest.raises(TableFormatError, match=r"region \d has box \[60, 60, 50, 50\] outside"):
        data[0]  # without the checksums, the replay's own bounds check still refuses it


def _table_files(table: Path) -> list[Path]:
    return sorted(p for p in table.rglob("*") if p.is_file())


def test_verify_passes_on_an_intact_table(table_dir):
    RILTable.open(table_dir, verify=True)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_verify_finds_a_single_flipped_byte_anywhere(table_dir, tmp_path_factory, data):
    copy = tmp_path_factory.mktemp("flip") / "t"
    shutil.copytree(table_dir, copy)
    files = _table_files(copy)
    target = data.draw(st.sampled_from(files), label="file")
    raw = bytearray(target.read_bytes())
    offset = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[offset] ^= data.draw(st.integers(1, 255), label="xor")
    target.write_bytes(bytes(raw))
    with pytest.raises(TableFormatError):
        RILTable.open(copy, verify=True)


def test_verify_refuses_a_table_without_checksums(copy):
    """A table of fdbpl 0.1 (no checksums) still opens, but cannot be verified."""

    def strip(m):
        for entry in m["shards"]:
            entry.pop("sha256")

    edit_manifest(copy, strip)
    (copy / "checksum.json").unlink()
    for folder in copy.glob("shard-*"):
        (folder / "sha256.json").unlink()
    RILTable.open(copy)
    with pytest.raises(TableFormatError, match=r"records no checksums \(built by an older fdbpl"):
        RILTable.open(copy, verify=True)
