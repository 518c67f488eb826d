"""fdbpl evaluate --protocol: cross-dataset and domain generalisation over CoOp's layouts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from processes import student_args, teacher_args

from fdbpl.cli import main
from fdbpl.data import read_dataset
from fdbpl.errors import FDBPLError
from fdbpl.report import report_tables


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
    train = ["train", tmp / "t", image_root, *student_args(teacher_files), "--out", tmp / "run"]
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
    from fdbpl.cache.scan import scan_image_list
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
    write_variant(tmp_path, "imagenet-rendition", "imagenet-r", [("n01", "goldfish")])
    (tmp_path / "imagenet-rendition" / "imagenet-r" / "n01" / "notes.txt").write_text("not an image")
    assert main(["evaluate", str(run), str(tmp_path), "--protocol", "domain-generalisation"]) == 2
    err = capsys.readouterr().err
    assert "1 file(s) of the evaluation set" in err and "imagenet-r/n01/notes.txt" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(run), str(empty), "--protocol", "domain-generalisation"]) == 2
    assert "none of the domain-generalisation datasets" in capsys.readouterr().err


def test_class_specific_contexts_do_not_transfer_and_unknown_protocols(tmp_path):
    from fdbpl.protocols import run_protocol

    state = {"learner": {"_extra_state": {"class_specific": True}}}
    with pytest.raises(FDBPLError, match="class-specific"):
        run_protocol("cross-dataset", tmp_path, lambda scan: 0.0, state)
    with pytest.raises(FDBPLError, match="protocol: expected one of"):
        run_protocol("few-shot", tmp_path, lambda scan: 0.0, {})


def test_report_averages_runs_as_the_papers_tables(tmp_path, capsys):
    from fdbpl.protocols import record_result

    runs = [tmp_path / "seed1", tmp_path / "seed2"]
    for k, run in enumerate(runs):
        run.mkdir()
        record_result(run, "base-to-new", "OxfordPets", {"base": 90.0 + k, "new": 80.0 + 2 * k})
        record_result(run, "base-to-new", "EuroSAT", {"base": 70.0, "new": 50.0})
        record_result(run, "cross-dataset", "Caltech101", 93.0 + k)
        record_result(run, "cross-dataset", "OxfordPets", 89.0)
    csv_path = tmp_path / "t.csv"
    assert main(["report", *map(str, runs), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    pets_hm = 2 * 90.5 * 81.0 / (90.5 + 81.0)
    assert f"| OxfordPets | 90.50 | 81.00 | {pets_hm:.2f} |" in out
    b, n = (90.5 + 70) / 2, (81 + 50) / 2
    assert f"| **average** | {b:.2f} | {n:.2f} | {2 * b * n / (b + n):.2f} |" in out  # HM of the averages
    assert "| Caltech101 | OxfordPets | average |" in out and "| 93.50 | 89.00 | 91.25 |" in out
    rows = csv_path.read_text().splitlines()
    assert (
        rows[0] == "protocol,dataset,metric,mean,runs"
        and "cross-dataset,Caltech101,accuracy,93.5000,2" in rows
    )
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "evaluation.json does not exist (run fdbpl evaluate" in capsys.readouterr().err


def test_evaluate_records_base_to_new_for_the_report(run, image_root, capsys):
    assert main(["evaluate", str(run), str(image_root)]) == 0
    printed = capsys.readouterr().out.splitlines()[1].split()
    recorded = json.loads((run / "evaluation.json").read_text())["base-to-new"][image_root.name]
    assert recorded == {
        "base": pytest.approx(float(printed[1]), abs=0.01),
        "new": pytest.approx(float(printed[2]), abs=0.01),
    }
    assert main(["report", str(run)]) == 0
    assert (
        f"| {image_root.name} | {float(printed[1]):.2f} | {float(printed[2]):.2f} |"
        in capsys.readouterr().out
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([], "expected a mapping of protocols, got list"),
        ({"few-shot": {}}, "few-shot: unknown protocol"),
        ({"base-to-new": {"OxfordPets": {"base": 90.0}}}, "base-to-new.OxfordPets: expected {'base'"),
        ({"base-to-new": {"OxfordPets": 90.0}}, "base-to-new.OxfordPets: expected {'base'"),
        ({"base-to-new": {"Pets": {"base": "90", "new": 80}}}, "base-to-new.Pets.base: expected an accuracy"),
        (
            {"base-to-new": {"Pets": {"base": 150.0, "new": 80}}},
            "base-to-new.Pets.base: expected an accuracy in [0, 100], got 150.0",
        ),
        (
            {"cross-dataset": {"EuroSAT": -5}},
            "cross-dataset.EuroSAT: expected an accuracy in [0, 100], got -5",
        ),
        ({"cross-dataset": {"EuroSAT": {"accuracy": 5}}}, "cross-dataset.EuroSAT: expected an accuracy"),
        ({"cross-dataset": ["EuroSAT"]}, "cross-dataset: expected a mapping of datasets, got list"),
        ({"cross-dataset": {"MNIST": 50}}, "cross-dataset.MNIST: unknown cross-dataset dataset"),
        (
            {"domain-generalisation": {"ImageNetA": True}},
            "domain-generalisation.ImageNetA: expected an accuracy",
        ),
    ],
)
def test_report_refuses_malformed_evaluations_naming_file_and_field(tmp_path, capsys, content, message):
    (tmp_path / "evaluation.json").write_text(json.dumps(content))
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fdbpl report: error: {tmp_path / 'evaluation.json'}: {message}"), err
    assert len(err.strip().splitlines()) == 1


@given(value=st.one_of(st.floats(allow_nan=True), st.integers(-1000, 1000)))
def test_report_accepts_exactly_the_accuracies_in_0_to_100(tmp_path_factory, value):
    run = tmp_path_factory.mktemp("run")
    (run / "evaluation.json").write_text(json.dumps({"cross-dataset": {"EuroSAT": value}}))
    if 0 <= value <= 100:
        assert report_tables([run])[0].count(f"{value:.2f}") == 2  # the column and the average
    else:
        with pytest.raises(FDBPLError, match="expected an accuracy in"):
            report_tables([run])


def test_report_counts_each_run_once_and_makes_the_csv_folder(tmp_path, capsys):
    from fdbpl.protocols import record_result

    run = tmp_path / "seed1"
    run.mkdir()
    record_result(run, "cross-dataset", "EuroSAT", 50.0)
    assert main(["report", str(run), str(tmp_path / "." / "seed1")]) == 2
    assert "are the same run folder; give each run once" in capsys.readouterr().err
    assert main(["report", str(run), "--csv", str(tmp_path / "new" / "folder" / "t.csv")]) == 0
    assert (tmp_path / "new" / "folder" / "t.csv").read_text().startswith("protocol,dataset")
    with pytest.raises(SystemExit) as refused:
        main(["report", str(run), "--csv", str(tmp_path)])
    assert refused.value.code == 2
    assert "fdbpl report: error: --csv: " in capsys.readouterr().err
