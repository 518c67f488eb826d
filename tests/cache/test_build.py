"""Building and reading the RIL table: round trip, replay, 2 ranks == 1, kill + resume, no pickle, errors."""

from __future__ import annotations

import filecmp
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from processes import fdbpl_command, run_fdbpl, single_thread_env, teacher_args

from fdbpl.cache import (
    CropSampler,
    RegionDataset,
    RILTable,
    TableFormatError,
    Teacher,
    build_table,
    clip_teacher,
    scan_image_folder,
)
from fdbpl.errors import FDBPLError
from fdbpl.images import decode_image, render_crop
from fdbpl.losses import information_weight
from fdbpl.sparsify import sparsify


def make_teacher(loaded, classnames):
    return clip_teacher(
        loaded.model,
        classnames,
        loaded.tokenizer,
        loaded.image_size,
        loaded.mean,
        loaded.std,
        description={"name": loaded.name, "pretrained": "test-checkpoint"},
    )


BUILD = dict(crops_per_image=6, topk=3, batch_size=12, shard_size=5, progress=False)


@pytest.fixture(scope="module", params=["mr", "ms"])
def built(request, tmp_path_factory, image_root, loaded_teacher):
    scan = scan_image_folder(image_root)
    teacher = make_teacher(loaded_teacher, scan.classnames)
    out = tmp_path_factory.mktemp("table") / request.param
    summary = build_table(image_root, out, teacher, strategy=request.param, **BUILD)
    return out, teacher, summary, request.param


def test_loaded_checkpoint_is_the_saved_one(teacher_files, loaded_teacher):
    _, checkpoint = teacher_files
    saved = torch.load(checkpoint, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in loaded_teacher.model.state_dict().items())


def _teacher_groups(num_images: int) -> list[range]:
    """The images whose crops the build sends to the teacher together (its documented grouping).

    Shards of ``shard_size`` images, cut into groups of ``batch_size // crops_per_image``
    images; the teacher is called on each group's crops in chunks of ``batch_size``.
    Recomputing with the same composition is what makes an exact comparison fair: CPU
    kernels may give other last bits for another batch size.
    """
    per_group = max(1, BUILD["batch_size"] // BUILD["crops_per_image"])
    groups = []
    for first in range(0, num_images, BUILD["shard_size"]):
        stop = min(first + BUILD["shard_size"], num_images)
        groups += [range(g, min(g + per_group, stop)) for g in range(first, stop, per_group)]
    return groups


def test_round_trip_equals_the_teacher_on_the_recorded_crops(built, image_root):
    """Every stored region equals: crop from its box and flip -> teacher -> Eq. 6 and sparsify -> storage dtypes."""
    out, teacher, summary, strategy = built
    table = RILTable.open(out)
    m = BUILD["crops_per_image"]
    assert len(table) == summary.regions == table.num_images * m
    sampler = CropSampler(seed=0)
    for group in _teacher_groups(table.num_images):
        crops = []
        for image_index in group:
            image = decode_image(image_root / table.image_paths[image_index])
            boxes, flips = sampler.sample(image_index, image.shape[1], image.shape[2], m)
            stored = table.regions(np.arange(image_index * m, image_index * m + m))
            stored_boxes, stored_flips = stored.boxes, stored.flips
            np.testing.assert_array_equal(stored_boxes, boxes)
            np.testing.assert_array_equal(stored_flips, flips)
            crops += [
                render_crop(image, b, bool(f), teacher.image_size, teacher.mean, teacher.std)
                for b, f in zip(boxes, flips)
            ]
        probs = torch.cat([teacher(c) for c in torch.stack(crops).split(BUILD["batch_size"])])
        want = sparsify(probs, 3, strategy)
        ids = np.arange(group.start * m, group.stop * m)
        got = table.regions(ids).labels
        assert torch.equal(got.indices, want.indices)
        torch.testing.assert_close(got.values, want.values.half().float(), rtol=0, atol=0)
        torch.testing.assert_close(got.fill, want.fill.float(), rtol=0, atol=0)
        w = torch.round(information_weight(probs).double() * 65535) / 65535
        torch.testing.assert_close(table.regions(ids).weights.double(), w, rtol=0, atol=1e-7)


def assert_stored_labels_fit(probs: torch.Tensor, stored_indices, stored_values, strategy: str) -> None:
    """Stored Top-K labels are those of ``probs`` up to one float16 step (the storage's resolution).

    ``probs`` may come from another batch composition than the build's, so its last bits
    may differ: the stored classes must still be a Top-K of ``probs`` (up to near-ties) and
    the stored values must equal ``probs``' own labels on those classes to within one
    float16 ulp (relative 2**-10) plus that noise.
    """
    noise = 1e-5
    probs = probs.double()
    idx = stored_indices.long()
    kept = probs.gather(1, idx)
    outside = probs.scatter(1, idx, -1.0).max(dim=1).values
    assert bool((kept.min(dim=1).values >= outside - noise).all()), "stored classes are not a Top-K"
    want = kept / kept.sum(dim=1, keepdim=True) if strategy == "mr" else kept
    torch.testing.assert_close(stored_values.double(), want, rtol=2**-10, atol=noise)


def test_replayed_crops_give_the_stored_labels_back(built, image_root):
    out, teacher, _, strategy = built
    table = RILTable.open(out)
    data = RegionDataset(
        table,
        image_root,
        image_size=teacher.image_size,
        mean=teacher.mean,
        std=teacher.std,
        crops_per_image=3,
    )
    for i in range(0, len(data), 5):
        item = data[i]
        assert_stored_labels_fit(teacher(item["image"]), item["indices"], item["values"], strategy)


def test_label_comparison_can_fail(built, image_root):
    """The tolerance of the replay check is one float16 step, not more: a shifted value is caught."""
    out, teacher, _, strategy = built
    table = RILTable.open(out)
    data = RegionDataset(table, image_root, image_size=teacher.image_size, mean=teacher.mean, std=teacher.std)
    item = data[0]
    probs = teacher(item["image"][None])
    assert_stored_labels_fit(probs, item["indices"][None], item["values"][None], strategy)
    off = item["values"][None].float() * (1 + 2**-8)
    with pytest.raises(AssertionError):
        assert_stored_labels_fit(probs, item["indices"][None], off, strategy)
    with pytest.raises(AssertionError, match="not a Top-K"):
        worst = torch.full_like(item["indices"][None], int(probs.argmin()))
        assert_stored_labels_fit(probs, worst, item["values"][None], strategy)


def test_bytes_per_region_meets_the_budget(built):
    out, _, _, _strategy = built
    table = RILTable.open(out)
    k = table.topk
    assert table.bytes_per_region <= 4 * k + 16
    on_disk = sum(np.load(p, mmap_mode="r").nbytes for p in out.glob("shard-*/*.npy") if p.name != "done.npy")
    assert on_disk == len(table) * table.bytes_per_region


def test_nothing_needs_pickle(built):
    out, _, _, _ = built
    for path in out.rglob("*"):
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            assert arr.dtype != object
        elif path.is_file():
            assert path.suffix == ".json", path


def test_table_refuses_object_arrays_and_truncation(built, tmp_path):
    import shutil

    out, _, _, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    column = copy / "shard-00000" / "weight.npy"
    np.save(column, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TableFormatError, match=r"weight.npy is unreadable or truncated"):
        RILTable.open(copy)
    shutil.copy(out / "shard-00000" / "weight.npy", column)
    data = column.read_bytes()
    column.write_bytes(data[: len(data) - 10])
    with pytest.raises(TableFormatError, match=r"weight.npy is unreadable or truncated"):
        RILTable.open(copy)
    (copy / "shard-00001" / "values.npy").unlink()
    shutil.copy(out / "shard-00000" / "weight.npy", column)
    with pytest.raises(TableFormatError, match=r"values.npy does not exist"):
        RILTable.open(copy)


def test_open_checks_classnames_and_images(built):
    out, _, _, _ = built
    table = RILTable.open(out)
    RILTable.open(out, classnames=table.classnames, images=table.image_paths)
    wrong = table.classnames.copy()
    wrong[2] = "zebra"
    with pytest.raises(
        TableFormatError, match=r"first difference at index 2: 'cyan cross' in the table vs 'zebra' given"
    ):
        RILTable.open(out, classnames=wrong)
    with pytest.raises(TableFormatError, match=r"images: the table was built on other images"):
        RILTable.open(out, images=table.image_paths[1:])


def test_missing_manifest_says_the_build_is_unfinished(tmp_path):
    (tmp_path / "build.json").write_text("{}")
    with pytest.raises(
        TableFormatError, match=r"manifest.json does not exist \(a build is in progress or was interrupted"
    ):
        RILTable.open(tmp_path)


def test_rebuild_is_a_no_op_and_other_settings_are_refused(built, image_root, loaded_teacher, tmp_path):
    out, teacher, _, strategy = built
    again = build_table(image_root, out, teacher, strategy=strategy, **BUILD)
    assert again.regions_computed == 0
    other = dict(BUILD, topk=2)
    with pytest.raises(
        TableFormatError, match=r"holds a table built with other settings \(topk differ\).*--overwrite"
    ):
        build_table(image_root, out, teacher, strategy=strategy, **other)
    import shutil

    copy = tmp_path / "t"
    shutil.copytree(out, copy)
    summary = build_table(image_root, copy, teacher, strategy=strategy, overwrite=True, **other)
    assert summary.regions_computed == summary.regions and RILTable.open(copy).topk == 2


def test_bad_inputs(image_root, loaded_teacher, tmp_path):
    scan = scan_image_folder(image_root)
    teacher = make_teacher(loaded_teacher, scan.classnames)
    with pytest.warns(UserWarning, match=r"topk: K=9 is more than the 8 classes; keeping all 8"):
        build_table(image_root, tmp_path / "a", teacher, **dict(BUILD, topk=9))
    assert RILTable.open(tmp_path / "a").topk == 8  # the paper's K = 20 works on any base half
    wrong = Teacher(lambda x: torch.full((x.shape[0], 5), 0.2), 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(
        FDBPLError, match=r"teacher: expected probabilities of shape \(B, 8\) for 8 classes, got \(\d+, 5\)"
    ):
        build_table(image_root, tmp_path / "b", wrong, **BUILD)
    row = torch.tensor([1.5, -0.5, 0, 0, 0, 0, 0, 0])
    negative = Teacher(lambda x: row.expand(x.shape[0], -1), 32, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(FDBPLError, match=r"teacher: expected non-negative probabilities"):
        build_table(image_root, tmp_path / "n", negative, **BUILD)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(TableFormatError, match="is not empty and holds no fdbpl table"):
        build_table(image_root, tmp_path / "c", teacher, **BUILD)


def test_scan_reports_converted_and_skipped_images_and_refuses_empty_classes(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (20, 10), (1, 2, 3)).save(root / "cat" / "a.png")
    Image.new("L", (20, 10), 7).save(root / "cat" / "b.png")
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.new("RGBA", (8, 8)).save(root / "dog" / "c.png")
    scan = scan_image_folder(root)
    assert scan.classnames == ["cat", "dog"]
    assert [r.path for r in scan.images] == ["cat/a.png", "cat/b.png", "dog/c.png"]
    assert scan.converted == ["cat/b.png", "dog/c.png"]
    assert scan.skipped[0][0] == "dog/broken.jpg"
    assert decode_image(root / "cat" / "b.png").shape == (3, 10, 20)
    (root / "empty_class").mkdir()
    with pytest.raises(FDBPLError, match=r"class folder 'empty_class' holds no images"):
        scan_image_folder(root)


@given(
    seed=st.integers(0, 2**31 - 1),
    index=st.integers(0, 10**6),
    height=st.integers(1, 400),
    width=st.integers(1, 400),
    scale_lo=st.floats(0.01, 1.0),
)
def test_crop_boxes_lie_inside_the_image_and_depend_only_on_seed_and_image(
    seed, index, height, width, scale_lo
):
    sampler = CropSampler(scale=(scale_lo, 1.0), seed=seed)
    boxes, flips = sampler.sample(index, height, width, 8)
    top, left, h, w = boxes.T
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    again, again_flips = CropSampler(scale=(scale_lo, 1.0), seed=seed).sample(index, height, width, 8)
    np.testing.assert_array_equal(boxes, again)
    np.testing.assert_array_equal(flips, again_flips)


def _cli_args(image_root, out, teacher_files, **extra):
    args = [
        image_root,
        out,
        *teacher_args(teacher_files),
        "--crops-per-image",
        extra.get("m", 6),
        "--topk",
        3,
        "--batch-size",
        extra.get("batch", 12),
        "--shard-size",
        extra.get("shard", 5),
        "--no-progress",
    ]
    return [str(a) for a in args]


def _same_tables(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def test_two_ranks_build_the_same_table_as_one(image_root, teacher_files, tmp_path):
    run_fdbpl("build-cache", *_cli_args(image_root, tmp_path / "one", teacher_files))
    run_fdbpl("build-cache", *_cli_args(image_root, tmp_path / "two", teacher_files), nproc=2)
    _same_tables(tmp_path / "one", tmp_path / "two")


def test_killed_build_resumes_to_the_uninterrupted_table(image_root, teacher_files, tmp_path):
    args = dict(m=20, batch=20, shard=12)  # one image per group: many resume points
    run_fdbpl("build-cache", *_cli_args(image_root, tmp_path / "ref", teacher_files, **args))
    out = tmp_path / "killed"
    cmd = fdbpl_command("build-cache", *_cli_args(image_root, out, teacher_files, **args))
    proc = subprocess.Popen(
        cmd, env=single_thread_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    killed_partial = False
    while time.monotonic() < deadline and proc.poll() is None:
        done = list(out.glob("shard-*.partial/done.npy"))
        if done:
            try:
                flags = np.load(done[0])
            except (ValueError, OSError):
                flags = np.zeros(1)
            if 0 < flags.sum() < len(flags):
                proc.send_signal(signal.SIGKILL)
                killed_partial = True
                break
        time.sleep(0.002)
    proc.wait()
    assert killed_partial, "the build finished before it could be killed mid-shard"
    assert not (out / "manifest.json").exists()
    with pytest.raises(TableFormatError, match="was interrupted"):
        RILTable.open(out)
    run_fdbpl("build-cache", *_cli_args(image_root, out, teacher_files, **args))
    _same_tables(tmp_path / "ref", out)


def test_cli_reports_errors_without_a_traceback(image_root, teacher_files, tmp_path):
    config, checkpoint = teacher_files
    names = tmp_path / "names.txt"
    names.write_text("only\ntwo\n")  # 8 class folders
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fdbpl",
            "build-cache",
            str(image_root),
            str(tmp_path / "x"),
            "--teacher",
            str(config),
            "--pretrained",
            str(checkpoint),
            "--classnames",
            str(names),
            "--crops-per-image",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "fdbpl build-cache: error: classnames:" in r.stderr
    assert "Traceback" not in r.stderr


def test_inspect_prints_a_summary_and_plots(built, image_root, tmp_path, capsys):
    from fdbpl.cli import main

    out, _, _, strategy = built
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"Top-3, {strategy.upper()}" in text and "regions     144 = 24 x 6 crops, 5 shard(s)" in text
    assert sum(line.startswith("  [") for line in text.splitlines()) == 10  # ten histogram bins
    pytest.importorskip("matplotlib")
    png = tmp_path / "w.png"
    assert main(["inspect", str(out), "--plot", str(png), "--images", str(image_root)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "histogram only" not in capsys.readouterr().out
    # without the images: the histogram alone, said so
    assert main(["inspect", str(out), "--plot", str(tmp_path / "h.png")]) == 0
    assert "(histogram only: --images DIR adds the crops)" in capsys.readouterr().out
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_rounds_the_recorded_temperature(built, capsys):
    from fdbpl.cli import main

    out = built[0]
    assert main(["inspect", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("teacher"))
    temperature = line.rsplit("temperature ", 1)[1]
    assert len(temperature.replace("0.", "").lstrip("0")) <= 7, line  # at most 6 significant digits


def test_a_half_precision_teacher_is_accepted(image_root, tmp_path):
    gen = torch.Generator().manual_seed(0)

    def half_probs(crops):
        return torch.softmax(3 * torch.randn(crops.shape[0], 8, generator=gen), dim=1).half()

    teacher = Teacher(half_probs, 16, (0.5,) * 3, (0.5,) * 3, {"name": "fp16"})
    build_table(image_root, tmp_path / "t", teacher, **dict(BUILD, topk=2))
    table = RILTable.open(tmp_path / "t")
    torch.testing.assert_close(
        table.regions(range(len(table))).labels.to_dense().sum(1), torch.ones(len(table)), atol=1e-2, rtol=0
    )


def test_a_refused_distributed_build_stops_every_rank(image_root, teacher_files, tmp_path):
    run_fdbpl("build-cache", *_cli_args(image_root, tmp_path / "t", teacher_files))
    other = _cli_args(image_root, tmp_path / "t", teacher_files, m=4)
    r = subprocess.run(
        fdbpl_command("build-cache", *other, nproc=2),
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert r.stderr.count("holds a table built with other settings") == 2  # both ranks say why


def test_regions_is_the_one_way_to_read_and_read_is_its_raw_fast_path(built):
    out, _, _, _ = built
    table = RILTable.open(out)
    ids = np.array([0, 7, len(table) - 1])
    regions = table.regions(ids)
    assert len(regions) == 3 and regions.image_index.tolist() == (ids // table.crops_per_image).tolist()
    assert not any(hasattr(table, old) for old in ("labels", "weights", "boxes", "region"))  # removed in 0.2
    for i, region_id in enumerate(ids):
        row = table.read(int(region_id))  # the dataset's fast path: raw stored columns
        np.testing.assert_array_equal(row["box"], regions.boxes[i])
        assert float(row["weight"]) == float(regions.weights[i])


def test_scan_reads_given_names_with_underscores_as_spaces(image_root):
    folders = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    names = [f"name_{i}" for i in range(len(folders))]
    assert scan_image_folder(image_root, names, check=False).classnames == [
        f"name {i}" for i in range(len(folders))
    ]
    kept = scan_image_folder(image_root, names, check=False, normalize_classnames=False)
    assert kept.classnames == names
    assert scan_image_folder(image_root, check=False, normalize_classnames=False).classnames == folders
