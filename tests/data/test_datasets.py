"""read_dataset on tiny fake datasets written in CoOp's layouts."""

from __future__ import annotations

import json
import pickle
import random

import pytest
from references import coop_draw, coop_subsample, dassl_generate_fewshot

from fdbpl.data import DATASETS, Item, PickleRefusedError, SplitFileError, read_dataset

CLASSES = ["american_bulldog", "bengal", "birman", "boxer", "persian"]


def write_pets(root, per_class=6):
    base = root / "oxford_pets"
    split = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            split["train"].append([f"{name}_{i}.jpg", label, name])
        split["val"].append([f"{name}_v.jpg", label, name])
        split["test"].append([f"{name}_t.jpg", label, name])
    (base / "images").mkdir(parents=True)
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return base


def test_a_split_file_dataset_with_shots_and_halves(tmp_path):
    base = write_pets(tmp_path)
    full = read_dataset("OxfordPets", tmp_path)
    assert full.classnames == CLASSES and len(full.train) == 30
    assert full.train[0] == Item(str(base / "images" / "american_bulldog_0.jpg"), 0, "american_bulldog")
    for seed in (1, 2, 3):
        for k in (1, 4, 16):
            got = read_dataset("oxfordpets", tmp_path, num_shots=k, seed=seed, subsample="new")
            train, val = coop_draw(full.train, full.val, k, seed, False)
            want = coop_subsample(train, val, full.test, subsample="new")
            assert [got.train, got.val, got.test] == want
            assert got.classnames == CLASSES[3:]


def test_a_cached_draw_is_read_instead_of_drawn(tmp_path, datum_class):
    base = write_pets(tmp_path)
    (base / "split_fewshot").mkdir()
    cached = {
        "train": [datum_class("/elsewhere/boxer_5.jpg", 3, 0, "boxer")],
        "val": [datum_class("/elsewhere/boxer_v.jpg", 3, 0, "boxer")],
    }
    (base / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(pickle.dumps(cached))
    got = read_dataset("OxfordPets", tmp_path, num_shots=2, seed=1)
    assert got.train == [Item("/elsewhere/boxer_5.jpg", 3, "boxer")] and got.classnames == ["boxer"]
    (base / "split_fewshot" / "shot_2-seed_1.pkl").write_bytes(
        pickle.dumps({"train": [random.Random], "val": []})
    )
    with pytest.raises(PickleRefusedError, match="only Dassl's Datum"):
        read_dataset("OxfordPets", tmp_path, num_shots=2, seed=1)


def test_fgvc_aircraft_reads_its_variant_lists(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nA300B4\nDC-9-30\n")
    for split in ("train", "val", "test"):
        (base / f"images_variant_{split}.txt").write_text("0001 A300B4\n0002 DC-9-30\n0003 707-320\n")
    got = read_dataset("FGVCAircraft", tmp_path)
    assert [(i.label, i.classname) for i in got.train] == [(1, "A300B4"), (2, "DC-9-30"), (0, "707-320")]
    assert got.train[0].impath == str(base / "images" / "0001.jpg")
    assert got.classnames == ["707-320", "A300B4", "DC-9-30"]


def write_imagenet_like(folder, wnids, names, per_class=3, extra=()):
    folder.mkdir(parents=True)
    for wnid in wnids:
        (folder / wnid).mkdir()
        for i in range(per_class):
            (folder / wnid / f"{wnid}_{i}.JPEG").write_bytes(b"")
        (folder / wnid / ".hidden").write_bytes(b"")
    for e in extra:
        (folder / e).write_text("readme")


WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark"]


def classnames_txt(path):
    path.write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)))


def test_imagenet_reads_classnames_txt_and_draws_train_only(tmp_path):
    base = tmp_path / "imagenet"
    write_imagenet_like(base / "images" / "train", WNIDS, NAMES, per_class=5)
    write_imagenet_like(base / "images" / "val", WNIDS, NAMES, per_class=2)
    classnames_txt(base / "classnames.txt")
    full = read_dataset("ImageNet", tmp_path)
    assert full.classnames == NAMES and len(full.train) == 20 and len(full.test) == 8
    assert full.val == full.test  # CoOp evaluates ImageNet on its val split
    assert all(".hidden" not in i.impath for i in full.train)
    got = read_dataset("ImageNet", tmp_path, num_shots=2, seed=3, subsample="base")
    state = random.getstate()
    random.seed(3)
    want_train = dassl_generate_fewshot(full.train, 2, False)
    random.setstate(state)
    assert [got.train, got.test] == coop_subsample(want_train, full.test, subsample="base")


@pytest.mark.parametrize(
    ("name", "folder", "images"),
    [
        ("ImageNetA", "imagenet-adversarial", "imagenet-a"),
        ("ImageNetR", "imagenet-rendition", "imagenet-r"),
        ("ImageNetSketch", "imagenet-sketch", "images"),
    ],
)
def test_imagenet_variants_label_their_sorted_folders(tmp_path, name, folder, images):
    base = tmp_path / folder
    subset = [WNIDS[3], WNIDS[1]]  # a subset of ImageNet's classes, as A and R hold
    write_imagenet_like(
        base / images, subset, None, extra=("README.txt",) if name != "ImageNetSketch" else ()
    )
    classnames_txt(base / "classnames.txt")
    got = read_dataset(name, tmp_path, num_shots=1)  # test-only: no draw
    assert got.classnames == ["goldfish", "tiger shark"]
    assert {(i.label, i.classname) for i in got.test} == {(0, "goldfish"), (1, "tiger shark")}
    assert len(got.test) == 6 and got.train == got.test


def test_imagenet_v2_folders_are_label_numbers(tmp_path):
    base = tmp_path / "imagenetv2"
    image_dir = base / "imagenetv2-matched-frequency-format-val"
    for label in range(len(WNIDS)):
        (image_dir / str(label)).mkdir(parents=True)
        (image_dir / str(label) / "a.jpeg").write_bytes(b"")
    classnames_txt(base / "classnames.txt")
    got = read_dataset("ImageNetV2", tmp_path)
    assert [(i.label, i.classname) for i in got.test] == list(enumerate(NAMES))


def test_a_missing_layout_names_the_dataset_path_and_docs(tmp_path):
    with pytest.raises(
        SplitFileError, match=r"dataset OxfordPets: .*oxford_pets does not exist .*DATASETS.md"
    ):
        read_dataset("OxfordPets", tmp_path)
    (tmp_path / "oxford_pets").mkdir()
    with pytest.raises(
        SplitFileError, match=r"split_zhou_OxfordPets.json does not exist .*OxfordPets section"
    ):
        read_dataset("OxfordPets", tmp_path)
    with pytest.raises(SplitFileError, match="unknown dataset 'Pets'; known: ImageNet, Caltech101"):
        read_dataset("Pets", tmp_path)
    assert len(DATASETS) == 15


def test_the_dataset_command_lists_what_coop_reads(tmp_path, capsys):
    from fdbpl.cli import main

    write_pets(tmp_path)
    assert (
        main(
            [
                "dataset",
                "OxfordPets",
                "--root",
                str(tmp_path),
                "--shots",
                "2",
                "--seed",
                "3",
                "--subset",
                "base",
                "--list",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    got = read_dataset("OxfordPets", tmp_path, num_shots=2, seed=3, subsample="base")
    assert lines == [
        f"oxford_pets/images/{i.impath.rsplit('/', 1)[1]}\t{i.label}\t{i.classname}" for i in got.train
    ]
    assert main(["dataset", "oxfordpets", "--root", str(tmp_path), "--split", "test"]) == 0
    assert capsys.readouterr().out.startswith("OxfordPets: 5 classes; train 30, val 5, test 5 images")
    assert main(["dataset", "Pets", "--root", str(tmp_path)]) == 2
    assert "fdbpl dataset: error: dataset: unknown dataset 'Pets'" in capsys.readouterr().err


def test_build_cache_and_train_from_a_dataset_of_coops_layout(tmp_path, teacher_files, capsys):
    from PIL import Image
    from processes import student_args, teacher_args

    from fdbpl.cache import RILTable
    from fdbpl.cli import main

    base = write_pets(tmp_path, per_class=3)
    for entry in json.loads((base / "split_zhou_OxfordPets.json").read_text())["train"]:
        Image.new("RGB", (40, 30), (entry[1] * 40, 90, 160)).save(base / "images" / entry[0])
    table = tmp_path / "table"
    argv = [
        "build-cache",
        tmp_path,
        table,
        *teacher_args(teacher_files),
        "--dataset",
        "OxfordPets",
        "--shots",
        2,
    ]
    argv += ["--seed", 1, "--subset", "base", "--crops-per-image", 2, "--topk", 2, "--template", "dataset"]
    argv += ["--no-progress"]
    assert main([str(a) for a in argv]) == 0
    t = RILTable.open(table)
    drawn = read_dataset("OxfordPets", tmp_path, num_shots=2, seed=1, subsample="base")
    assert t.classnames == ["american bulldog", "bengal", "birman"]  # CoOp's names, '_' as a space
    assert t.manifest["teacher"]["template"] == "a photo of a {}, a type of pet."  # CoOp's zero-shot prompt
    assert t.image_paths == [i.impath[len(str(tmp_path)) + 1 :] for i in drawn.train]
    assert t.image_labels == [i.label for i in drawn.train]
    train = ["train", table, tmp_path, *student_args(teacher_files), "--out", tmp_path / "run"]
    assert main([str(a) for a in [*train, "--epochs", 1, "--batch-size", 4, "--no-progress"]]) == 0
    # evaluate on the test split, base and new halves (the run learned the base half)
    for entry in json.loads((base / "split_zhou_OxfordPets.json").read_text())["test"]:
        Image.new("RGB", (40, 30), (entry[1] * 40, 90, 160)).save(base / "images" / entry[0])
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path), "--dataset", "OxfordPets"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["prompts", "Base", "New", "HM"] and out[1].startswith("learned")
    argv3 = [*argv[:-1], "--shots", 5, "--fewshot-repeat"]  # 3 images a class, K = 5: drawn twice
    assert main([str(a) for a in [*argv3, "--no-progress", "--overwrite"]]) == 2
    assert "holds some images twice" in capsys.readouterr().err
    argv2 = [*argv[:-1], "--classnames", tmp_path / "x.txt", "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv2])
    assert exit_.value.code == 2
    assert "--dataset: cannot be given with --classnames" in capsys.readouterr().err


def test_dataset_templates():
    from fdbpl.data import DATASET_TEMPLATES, dataset_template

    assert set(DATASET_TEMPLATES) == set(DATASETS)
    assert all(t.count("{}") == 1 for t in DATASET_TEMPLATES.values())
    assert dataset_template("describabletextures") == "{} texture."
    with pytest.raises(SplitFileError, match="unknown dataset"):
        dataset_template("Textures")


def test_template_dataset_needs_a_dataset(tmp_path, teacher_files, image_root, capsys):
    from processes import teacher_args

    from fdbpl.cli import main

    argv = ["build-cache", str(image_root), str(tmp_path / "t"), *teacher_args(teacher_files)]
    assert main([*argv, "--template", "dataset"]) == 2
    assert "template: 'dataset' takes the template of --dataset NAME" in capsys.readouterr().err


def test_the_old_dassl_draw_is_an_option(tmp_path, capsys):
    from fdbpl.cli import main

    write_pets(tmp_path, per_class=3)
    argv = ["dataset", "OxfordPets", "--root", str(tmp_path), "--shots", "5", "--seed", "2", "--list"]
    assert main(argv) == 0
    whole = capsys.readouterr().out.splitlines()
    assert main([*argv, "--fewshot-repeat"]) == 0
    repeated = capsys.readouterr().out.splitlines()
    assert len(whole) == 15 and len(repeated) == 25  # 3 kept whole, or 5 drawn with replacement
    full = read_dataset("OxfordPets", tmp_path)
    want, _ = coop_draw(full.train, full.val, 5, 2, True)
    assert [line.split("\t")[0].rsplit("/", 1)[1] for line in repeated] == [
        i.impath.rsplit("/", 1)[1] for i in want
    ]


def test_training_reads_the_recorded_draw_again_and_refuses_another(tmp_path):
    """A table built from a draw records it; train() reads that draw again under IMAGES and
    refuses a table whose images are no longer it, or a root that does not hold the dataset."""
    from PIL import Image
    from tiny_models import toy_teacher

    from fdbpl.cache import RILTable, build_table
    from fdbpl.cache.provenance import check_recorded_draw
    from fdbpl.cache.scan import scan_split
    from fdbpl.errors import TableMismatchError
    from fdbpl.train import train

    base = write_pets(tmp_path, per_class=4)
    split = json.loads((base / "split_zhou_OxfordPets.json").read_text())
    for entry in split["train"]:
        Image.new("RGB", (40, 30), (entry[1] * 40, 90, 160)).save(base / "images" / entry[0])
    data = read_dataset("OxfordPets", tmp_path, num_shots=2, seed=1, subsample="base")
    build_table(
        tmp_path,
        tmp_path / "table",
        toy_teacher(len(data.classnames)),
        scan=scan_split(data, tmp_path, "train"),
        crops_per_image=2,
        topk=2,
        progress=False,
    )
    table = RILTable.open(tmp_path / "table")
    check_recorded_draw(table, tmp_path)  # the same draw: accepted
    with pytest.raises(TableMismatchError, match="cannot be read under"):
        check_recorded_draw(table, tmp_path / "elsewhere")
    drawn = {i.impath.rsplit("/", 1)[-1] for i in data.train}
    for entry in split["train"]:  # the split file now names other images for a drawn one
        if entry[0] in drawn:
            entry[0] = "renamed_" + entry[0]
            Image.new("RGB", (40, 30)).save(base / "images" / entry[0])
            break
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    with pytest.raises(TableMismatchError, match=r"does not hold .*renamed_|holds .*which is not in"):
        train(table, tmp_path, None, tmp_path / "run", verify=False, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written
    table.manifest["source"]["vocabulary"] = True  # a vocabulary's classes are not the dataset's
    check_recorded_draw(table, tmp_path)
