"""Every reader of a user-named file refuses what is not a regular file, at once.

A FIFO would block a plain read forever: each case here must end within seconds (the
readers open without blocking and check the descriptor). A directory, a NUL byte in the
path and a missing file are refused by the reader's own error type, naming the argument
and what was expected.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fdbpl.cache.manifest import read_json_file
from fdbpl.data import PickleRefusedError, SplitFileError, read_dataset, read_fewshot_pickle, read_split_json
from fdbpl.errors import FDBPLError, InputValueError, TableFormatError
from fdbpl.files import read_file_bytes, read_file_text, regular_file
from fdbpl.protocols import read_evaluation

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")

KINDS = ("fifo", "directory", "missing", "nul")


def odd_path(tmp_path, kind):
    """A path of the given kind: a FIFO, a directory, a missing file, or one with a NUL byte."""
    path = tmp_path / f"odd-{kind}"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "nul":
        return str(path) + "\x00.json"
    return path


EXPECTED = {
    "fifo": "is a FIFO",
    "directory": "is a directory",
    "missing": "does not exist",
    "nul": "contains a NUL byte",
}


@pytest.fixture(autouse=True)
def no_hang():
    """A reader that blocks on a FIFO fails the test after 20 s instead of hanging the run."""

    def hung(signum, frame):
        raise TimeoutError("a reader blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("read", "error", "what"),
    [
        (lambda p: read_split_json(p, "/images"), SplitFileError, "split file"),
        (read_fewshot_pickle, InputValueError, "few-shot file"),
        (lambda p: read_json_file(p, "table"), TableFormatError, "table"),
        (read_evaluation, InputValueError, "evaluation"),
        (lambda p: read_file_text(p, "--classnames"), InputValueError, "--classnames"),
    ],
)
def test_readers_refuse_odd_files_at_once(tmp_path, kind, read, error, what):
    with pytest.raises(error) as refused:
        read(odd_path(tmp_path, kind))
    message = str(refused.value)
    assert message.startswith(f"{what}: ") and EXPECTED[kind] in message, message


@pytest.mark.parametrize("kind", KINDS)
def test_command_line_readers_refuse_odd_files(tmp_path, kind, capsys):
    from fdbpl.cli import main

    (tmp_path / "images" / "a").mkdir(parents=True)
    path = odd_path(tmp_path, kind)
    argv = ["build-cache", tmp_path / "images", tmp_path / "t", "--teacher", "x", "--classnames", path]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert (
        code == 2 and err.startswith("fdbpl build-cache: error: --classnames: ") and EXPECTED[kind] in err
    ), err
    assert len(err.strip().splitlines()) == 1


def test_a_dataset_layout_file_that_is_a_fifo_is_refused(tmp_path):
    (tmp_path / "oxford_pets").mkdir()
    os.mkfifo(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json")
    with pytest.raises(SplitFileError, match="is a FIFO"):
        read_dataset("OxfordPets", tmp_path)


@given(data=st.binary(max_size=200))
def test_a_regular_file_reads_back_its_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("f") / "x"
    path.write_bytes(data)
    assert read_file_bytes(path, "x") == data
    assert regular_file(str(path), "x") == path


@pytest.mark.parametrize("value", [None, 3, b"", ""])
def test_paths_of_the_wrong_type_are_named(value):
    with pytest.raises(InputValueError, match=r"^arg: expected a file path"):
        regular_file(value, "arg")


def test_text_that_is_not_utf8_is_refused_at_its_offset(tmp_path):
    (tmp_path / "x").write_bytes(b"ab\xff")
    with pytest.raises(InputValueError, match=r"^arg: .* is not UTF-8 text \(invalid start byte at byte 2\)"):
        read_file_text(tmp_path / "x", "arg")


# -- readers validate what they read ----------------------------------------------------


def test_a_label_with_two_class_names_is_refused(tmp_path):
    split = {"train": [["a.jpg", 0, "cat"], ["b.jpg", 1, "dog"]], "val": [], "test": [["c.jpg", 0, "kitten"]]}
    (tmp_path / "s.json").write_text(json.dumps(split))
    with pytest.raises(SplitFileError, match=r"label 0 is 'cat' at train\[0\] but 'kitten' at test\[0\]"):
        read_split_json(tmp_path / "s.json", tmp_path)


@pytest.mark.parametrize(
    ("label", "classname", "match"),
    [(-1, "cat", "a label >= 0"), (True, "cat", "a label >= 0"), (0, "dog", "label 0 is 'cat'")],
)
def test_a_fewshot_pickle_with_impossible_labels_is_refused(tmp_path, datum_class, label, classname, match):
    data = {
        "train": [datum_class("/a.jpg", 0, 0, "cat"), datum_class("/b.jpg", label, 0, classname)],
        "val": [],
    }
    (tmp_path / "f.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(PickleRefusedError, match=match):
        read_fewshot_pickle(tmp_path / "f.pkl")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_shots": -1}, "num_shots: expected an integer >= 0, got -1"),
        ({"num_shots": "2"}, "num_shots: expected an integer, got str '2'"),
        ({"num_shots": 2.0}, "num_shots: expected an integer, got float 2.0"),
        ({"seed": "3"}, "seed: expected an integer, got str '3'"),
        ({"root": None}, "root: expected the folder that holds the datasets, got None"),
        ({"name": 3}, "dataset: unknown dataset 3"),
    ],
)
def test_read_dataset_names_arguments_of_the_wrong_type(tmp_path, kwargs, message):
    args = {"name": "OxfordPets", "root": tmp_path, **kwargs}
    name, root = args.pop("name"), args.pop("root")
    with pytest.raises(FDBPLError) as refused:
        read_dataset(name, root, **args)
    assert str(refused.value).startswith(message)


def test_numpy_integers_are_integers(tmp_path):
    np = pytest.importorskip("numpy")
    with pytest.raises(SplitFileError, match="oxford_pets does not exist"):  # past the type checks
        read_dataset("OxfordPets", tmp_path, num_shots=np.int64(2), seed=np.int32(3))


def test_image_scans_report_a_fifo_instead_of_reading_it(tmp_path, image_root):
    from fdbpl.cache import scan_image_folder
    from fdbpl.cache.scan import scan_image_list

    root = tmp_path / "images"
    shutil.copytree(image_root, root)
    folder = sorted(p for p in root.iterdir() if p.is_dir())[0]
    os.mkfifo(folder / "zz-pipe.jpg")
    scan = scan_image_folder(root)
    assert (f"{folder.name}/zz-pipe.jpg", "not a regular file") in scan.skipped
    assert all(not r.path.endswith("zz-pipe.jpg") for r in scan.images)
    with pytest.raises(InputValueError, match=r"^images: .*zz-pipe\.jpg is a FIFO"):
        scan_image_list(root, [(str(folder / "zz-pipe.jpg"), 0)], scan.classnames)
