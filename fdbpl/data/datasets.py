"""The base-to-new benchmark's datasets in CoOp's layout (its DATASETS.md), read as CoOp does.

:func:`read_dataset` gives the train, val and test items of one dataset under ``ROOT``,
with the labels, class names and order CoOp's dataset classes give: split files
(``split_zhou_*.json``) for nine datasets, FGVCAircraft's variant lists, ImageNet's
``classnames.txt`` and folders, and the four ImageNet variants (test only; ImageNet-A
and -R are 200-class subsets labelled by their sorted folders, as CoOp). Few-shot draws
are Dassl's (:func:`~fdbpl.data.dassl_fewshot`), or read from ``split_fewshot/`` when a
cached draw exists; base/new halves are CoOp's.

Images inside a class folder are listed in the file system's order, as CoOp lists them
(ImageNet and its variants): the same files on another file system can come in another
order, so CoOp's cached ``preprocessed.pkl`` / ``split_fewshot`` files are what make a
draw identical across machines — they are read when present.
"""

from __future__ import annotations

import numbers
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from fdbpl.data.fewshot import dassl_fewshot, fewshot_draw
from fdbpl.data.items import Item, subsample_classes
from fdbpl.data.pickles import read_fewshot_pickle
from fdbpl.data.split_files import read_split_json
from fdbpl.errors import SplitFileError
from fdbpl.files import read_file_text

__all__ = ["DATASETS", "DatasetLayout", "DatasetSplits", "dataset_layout", "read_dataset"]

_DOCS = "CoOp's DATASETS.md"


@dataclass(frozen=True)
class DatasetLayout:
    """Where a dataset lives under ``ROOT`` and how CoOp reads it."""

    name: str  # CoOp's dataset class name
    folder: str  # ROOT/folder
    images: str  # the image folder inside it ("" for the folder itself)
    kind: str  # "split", "aircraft", "imagenet", "imagenet_folders", "imagenetv2"
    split_file: str = ""
    ignored: tuple[str, ...] = ()
    test_only: bool = False


#: Every dataset :func:`read_dataset` reads, by CoOp's name: where it lives under ROOT and how.
DATASETS: dict[str, DatasetLayout] = {
    layout.name: layout
    for layout in (
        DatasetLayout("ImageNet", "imagenet", "images", "imagenet"),
        DatasetLayout(
            "Caltech101", "caltech-101", "101_ObjectCategories", "split", "split_zhou_Caltech101.json"
        ),
        DatasetLayout("OxfordPets", "oxford_pets", "images", "split", "split_zhou_OxfordPets.json"),
        DatasetLayout("StanfordCars", "stanford_cars", "", "split", "split_zhou_StanfordCars.json"),
        DatasetLayout("OxfordFlowers", "oxford_flowers", "jpg", "split", "split_zhou_OxfordFlowers.json"),
        DatasetLayout("Food101", "food-101", "images", "split", "split_zhou_Food101.json"),
        DatasetLayout("FGVCAircraft", "fgvc_aircraft", "images", "aircraft"),
        DatasetLayout("SUN397", "sun397", "SUN397", "split", "split_zhou_SUN397.json"),
        DatasetLayout("DescribableTextures", "dtd", "images", "split", "split_zhou_DescribableTextures.json"),
        DatasetLayout("EuroSAT", "eurosat", "2750", "split", "split_zhou_EuroSAT.json"),
        DatasetLayout("UCF101", "ucf101", "UCF-101-midframes", "split", "split_zhou_UCF101.json"),
        DatasetLayout(
            "ImageNetV2",
            "imagenetv2",
            "imagenetv2-matched-frequency-format-val",
            "imagenetv2",
            test_only=True,
        ),
        DatasetLayout("ImageNetSketch", "imagenet-sketch", "images", "imagenet_folders", test_only=True),
        DatasetLayout(
            "ImageNetA",
            "imagenet-adversarial",
            "imagenet-a",
            "imagenet_folders",
            ignored=("README.txt",),
            test_only=True,
        ),
        DatasetLayout(
            "ImageNetR",
            "imagenet-rendition",
            "imagenet-r",
            "imagenet_folders",
            ignored=("README.txt",),
            test_only=True,
        ),
    )
}


@dataclass
class DatasetSplits:
    """A dataset's items, and its class names by label (Dassl's ``classnames``, from train)."""

    name: str
    train: list[Item]
    val: list[Item]
    test: list[Item]
    classnames: list[str] = field(default_factory=list)
    #: what was read: ``dataset``, ``split_file`` (or ``fewshot_file``, relative to ROOT),
    #: ``shots``, ``seed``, ``subset``, ``repeat`` (a table built from it records this)
    source: dict[str, object] = field(default_factory=dict)


def dataset_layout(name: str) -> DatasetLayout:
    """The layout of a dataset named as CoOp names it (case does not matter)."""
    lookup = {n.lower(): layout for n, layout in DATASETS.items()}
    layout = lookup.get(name.lower()) if isinstance(name, str) else None
    if layout is None:
        raise SplitFileError(f"dataset: unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return layout


def _missing(layout: DatasetLayout, path: Path) -> SplitFileError:
    return SplitFileError(
        f"dataset {layout.name}: {path} does not exist (expected {layout.name}'s layout under ROOT/{layout.folder}; "
        f"see the {layout.name} section of {_DOCS})"
    )


def _require(layout: DatasetLayout, path: Path) -> Path:
    if not path.exists():
        raise _missing(layout, path)
    return path


def _read_text(layout: DatasetLayout, path: Path) -> str:
    """A text file of the layout (missing: named with its DATASETS.md section)."""
    if not path.exists():
        raise _missing(layout, path)
    return read_file_text(
        path, f"dataset {layout.name}", f"a text file of {layout.name}'s layout", SplitFileError
    )


def _integer(value: object, name: str, minimum: int | None = None) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise SplitFileError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise SplitFileError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def _listdir(path: Path) -> list[str]:
    """Dassl's ``listdir_nohidden``: the file system's order, without dot files."""
    return [f for f in os.listdir(path) if not f.startswith(".")]


def _read_classnames(layout: DatasetLayout, path: Path) -> dict[str, str]:
    """ImageNet's ``classnames.txt``: ``wnid name`` lines, in file order."""
    names: dict[str, str] = {}
    for line in _read_text(layout, path).splitlines():
        parts = line.strip().split(" ")
        if parts and parts[0]:
            names[parts[0]] = " ".join(parts[1:])
    return names


def _folder_items(
    layout: DatasetLayout, image_dir: Path, folders: list[str], names: dict[str, str]
) -> list[Item]:
    items = []
    for label, folder in enumerate(folders):
        if folder not in names:
            raise SplitFileError(
                f"dataset {layout.name}: folder {folder!r} of {image_dir} is not in classnames.txt"
            )
        for name in _listdir(image_dir / folder):
            items.append(Item(str(image_dir / folder / name), label, names[folder]))
    return items


def _read_full(layout: DatasetLayout, base: Path) -> tuple[list[Item], list[Item], list[Item]]:
    """Every item of every split, before any few-shot draw or subsampling."""
    image_dir = base / layout.images if layout.images else base
    if layout.kind == "split":
        split = read_split_json(_require(layout, base / layout.split_file), image_dir)
        return split["train"], split["val"], split["test"]
    if layout.kind == "aircraft":
        variants = [line.strip() for line in _read_text(layout, base / "variants.txt").splitlines()]
        label_of = {c: i for i, c in enumerate(variants)}

        def read(split: str) -> list[Item]:
            items = []
            for line in _read_text(layout, base / f"images_variant_{split}.txt").splitlines():
                parts = line.strip().split(" ")
                name = " ".join(parts[1:])
                if name not in label_of:
                    raise SplitFileError(f"dataset {layout.name}: variant {name!r} is not in variants.txt")
                items.append(Item(str(image_dir / f"{parts[0]}.jpg"), label_of[name], name))
            return items

        return read("train"), read("val"), read("test")
    if layout.kind == "imagenet":
        pkl = base / "preprocessed.pkl"
        if pkl.exists():
            data = read_fewshot_pickle(pkl, keys=("train", "test"))
            return data["train"], data["test"], data["test"]
        names = _read_classnames(layout, base / "classnames.txt")
        splits = []
        for split in ("train", "val"):
            split_dir = _require(layout, image_dir / split)
            folders = sorted(f.name for f in os.scandir(split_dir) if f.is_dir())
            splits.append(_folder_items(layout, split_dir, folders, names))
        return splits[0], splits[1], splits[1]  # CoOp evaluates on ImageNet's val, also its val split
    names = _read_classnames(layout, base / "classnames.txt")
    _require(layout, image_dir)
    if layout.kind == "imagenetv2":  # folders 0..999 in classnames.txt's order
        wnids = list(names)
        items = []
        for label in range(len(wnids)):
            folder = image_dir / str(label)
            items += [
                Item(str(folder / f), label, names[wnids[label]]) for f in _listdir(_require(layout, folder))
            ]
        return items, items, items
    folders = sorted(f for f in _listdir(image_dir) if f not in layout.ignored)
    items = _folder_items(layout, image_dir, folders, names)
    return items, items, items


def read_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    num_shots: int = 0,
    seed: int = 1,
    subsample: str = "all",
    repeat: bool = False,
) -> DatasetSplits:
    """A dataset of the benchmark as CoOp's dataset class gives it for these settings.

    Args:
        name: CoOp's dataset name (:data:`DATASETS`: ``ImageNet``, ``Caltech101``,
            ``OxfordPets``, ``StanfordCars``, ``OxfordFlowers``, ``Food101``,
            ``FGVCAircraft``, ``SUN397``, ``DescribableTextures``, ``EuroSAT``, ``UCF101``,
            ``ImageNetV2``, ``ImageNetSketch``, ``ImageNetA``, ``ImageNetR``).
        root: CoOp's ``DATASET.ROOT``, the folder that holds the datasets' folders.
        num_shots: K images per class (0: all), CoOp's ``DATASET.NUM_SHOTS``; an integer >= 0.
        seed: the draw's seed, CoOp's ``--seed`` (an integer).
        subsample: ``"all"``, ``"base"`` or ``"new"`` (``DATASET.SUBSAMPLE_CLASSES``).
        repeat: draw classes with fewer than K images with replacement (Dassl before 2022).

    Returns:
        :class:`DatasetSplits`: train, val and test items and the class names by label.

    Raises:
        SplitFileError: an unknown dataset, a ``root``, ``num_shots`` or ``seed`` of the
            wrong type or range (named), or a file of its layout that is missing (named, with
            the DATASETS.md section), not a regular file, or malformed.
        PickleRefusedError: a cached draw that names anything but Dassl's ``Datum``.
    """
    layout = dataset_layout(name)
    num_shots, seed = _integer(num_shots, "num_shots", minimum=0), _integer(seed, "seed")
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root) or "\x00" in str(os.fspath(root)):
        raise SplitFileError(f"root: expected the folder that holds the datasets, got {root!r}")
    base = Path(root) / layout.folder
    if not base.is_dir():
        raise _missing(layout, base)
    train, val, test = _read_full(layout, base)
    source: dict[str, object] = {"dataset": layout.name}
    if layout.split_file:
        source["split_file"] = f"{layout.folder}/{layout.split_file}"
    if num_shots >= 1 and not layout.test_only:
        cached = base / "split_fewshot" / f"shot_{num_shots}-seed_{seed}.pkl"
        if cached.exists():
            source["fewshot_file"] = f"{layout.folder}/split_fewshot/{cached.name}"
        if layout.kind == "imagenet":  # CoOp draws ImageNet's train split only
            if cached.exists():
                train = read_fewshot_pickle(cached, keys=("train",))["train"]
            else:
                train = fewshot_draw(train, num_shots, random.Random(seed), repeat)
        elif cached.exists():
            data = read_fewshot_pickle(cached)
            train, val = data["train"], data["val"]
        else:
            train, val = dassl_fewshot(train, val, num_shots, seed, repeat)
    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    by_label = {item.label: item.classname for item in train}
    classnames = [by_label[label] for label in sorted(by_label)]
    shots = num_shots if num_shots >= 1 and not layout.test_only else 0
    source.update(shots=shots, seed=int(seed), subset=subsample, repeat=bool(repeat))
    return DatasetSplits(layout.name, train, val, test, classnames, source)
