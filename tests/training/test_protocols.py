"""fdbpl evaluate --protocol: cross-dataset and domain generalisation over CoOp's layouts."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from processes import teacher_args

from fdbpl.cli import main
from fdbpl.data import read_dataset


def _image(path, shade):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (shade, 120, 200 - shade)).save(path)


def write_variant(root, folder, images, wnids_names, per_class=2):
    base = root / folder
    base.mkdir(parents=True)
    (base / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in wnids_names))
    for k, (wnid, _) in enumerate(wnids_names):
        for i in range(per_class):
            _image(base / images / wnid / f"{i}.jpg", 30 * k)


def write_split_dataset(root, folder, images, split_file, classes, per_class=2):
    base = root / folder
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(classes):
        for i in range(per_class):
            rel = f"{name}/{i}.jpg"
            _image(base / images / rel, 25 * label)
            split["test"].append([rel, label, name])
            split["train"].append([rel, label, name])  # Dassl names the classes from train
    (base / split_file).write_text(json.dumps(split))


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_root, teacher_files):
    tmp = tmp_path_factory.mktemp("protocols")
    config, checkpoint = teacher_files
    build = [
        "build-cache",
        image_root,
        tmp / "t",
        *teacher_args(teacher_files),
        "--crops-per-image",
        2,
        "--topk",
        2,
    ]
    assert main([str(a) for a in [*build, "--no-progress"]]) == 0
    train = [
        "train",
        tmp / "t",
        image_root,
        "--student",
        config,
        "--pretrained",
        checkpoint,
        "--out",
        tmp / "run",
    ]
    assert main([str(a) for a in [*train, "--epochs", 1, "--batch-size", 4, "--no-progress"]]) == 0
    return tmp / "run"


def test_domain_generalisation_over_the_variants_present(run, tmp_path, capsys):
    wn = [("n01", "goldfish"), ("n02", "great white shark"), ("n03", "tiger shark")]
    write_variant(tmp_path, "imagenet-adversarial", "imagenet-a", wn[:2])
    write_variant(tmp_path, "imagenet-sketch", "images", wn)
    capsys.readouterr()
    assert main(["evaluate", str(run), str(tmp_path), "--protocol", "domain-generalisation"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = dict(line.split()[:2] for line in lines if not line.startswith("average"))
    assert set(rows) == {"ImageNetSketch", "ImageNetA"}
    average = next(line for line in lines if line.startswith("average"))
    assert "missing: ImageNetV2, ImageNetR" in average
    assert float(average.split()[1]) == pytest.approx(sum(float(v) for v in rows.values()) / 2, abs=0.01)
    recorded = json.loads((run / "evaluation.json").read_text())["domain-generalisation"]
    assert recorded.keys() == rows.keys()
    # each row is the accuracy of the run's contexts on all of that dataset's classes
    from fdbpl.cache.images import scan_image_list
    from fdbpl.evaluate import evaluate_prompts
    from fdbpl.models import load_open_clip
    from fdbpl.run import RunFolder

    folder = RunFolder(run)
    student = folder.student()
    loaded = load_open_clip(student["source"], student["pretrained"])
    data = read_dataset("ImageNetA", tmp_path)
    scan = scan_image_list(tmp_path, [(i.impath, i.label) for i in data.test], data.classnames, check=False)
    want = evaluate_prompts(
        loaded.model, tmp_path, folder.load_checkpoint(), "all", scan=scan, transfer=True, **loaded.recipe()
    )
    assert float(rows["ImageNetA"]) == pytest.approx(want.percent, abs=0.01)


def test_cross_dataset_and_refusals(run, tmp_path, capsys):
    write_split_dataset(
        tmp_path, "oxford_pets", "images", "split_zhou_OxfordPets.json", ["bengal", "boxer", "pug"]
    )
    assert main(["evaluate", str(run), str(tmp_path), "--protocol", "cross-dataset"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OxfordPets") and "(1 datasets; missing: Caltech101," in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(run), str(empty), "--protocol", "domain-generalisation"]) == 2
    assert "none of the domain-generalisation datasets" in capsys.readouterr().err


def test_class_specific_contexts_do_not_transfer_and_unknown_protocols(tmp_path):
    from fdbpl.errors import FDBPLError
    from fdbpl.protocols import run_protocol

    state = {"learner": {"_extra_state": {"class_specific": True}}}
    with pytest.raises(FDBPLError, match="class-specific"):
        run_protocol("cross-dataset", tmp_path, lambda scan: 0.0, state)
    with pytest.raises(FDBPLError, match="protocol: expected one of"):
        run_protocol("few-shot", tmp_path, lambda scan: 0.0, {})
