"""CoOp's dataset files and Dassl's few-shot draws, read as CoOp + Dassl read them.

The base-to-new benchmark's 11 datasets and ImageNet's 4 variants in their own layout
(CoOp's DATASETS.md, :func:`read_dataset`), and its pieces: the items of a split file
(:func:`read_split_json`), Dassl's
few-shot draw for a seed (:func:`dassl_fewshot`), a cached draw read without running
pickle code (:func:`read_fewshot_pickle`), CoOp's base/new halves
(:func:`subsample_classes`), its class-name normalisation (:func:`coop_classname`) and
its zero-shot prompt per dataset (:func:`dataset_template`).
No torch, no images: plain data.
"""

from fdbpl.data.datasets import DATASETS, DatasetSplits, read_dataset
from fdbpl.data.fewshot import dassl_fewshot, fewshot_draw
from fdbpl.data.items import Item, coop_classname, subsample_classes
from fdbpl.data.pickles import read_fewshot_pickle
from fdbpl.data.split_files import read_split_json
from fdbpl.data.templates import DATASET_TEMPLATES, dataset_template
from fdbpl.errors import PickleRefusedError, SplitFileError

__all__ = [
    "DATASETS",
    "DATASET_TEMPLATES",
    "DatasetSplits",
    "Item",
    "PickleRefusedError",
    "SplitFileError",
    "coop_classname",
    "dassl_fewshot",
    "dataset_template",
    "fewshot_draw",
    "read_dataset",
    "read_fewshot_pickle",
    "read_split_json",
    "subsample_classes",
]
