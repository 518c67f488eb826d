"""Dassl's cached few-shot draws (``split_fewshot/shot_K-seed_S.pkl``), read without running
pickle code.

The files are pickles of ``{"train": [Datum, ...], "val": [Datum, ...]}``. Unpickling
runs whatever a file names, so these are read by an unpickler that resolves exactly one
class, Dassl's ``Datum``, to a harmless stand-in (its state is set as data, its code never
runs), and refuses any other reference — a function, a module, another class — with
:class:`PickleRefusedError` before anything is called. Plain types (dicts, lists, strings,
numbers) need no reference.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any

from fdbpl.data.items import Item, check_one_name_per_label
from fdbpl.errors import InputValueError, PickleRefusedError
from fdbpl.files import read_file_bytes

__all__ = ["DATUM", "PickleRefusedError", "read_fewshot_pickle"]

#: Where Dassl's ``Datum`` lives, as a pickle names it.
DATUM = ("dassl.data.datasets.base_dataset", "Datum")


class _Datum:
    """Receives a pickled ``Datum``'s attributes; runs nothing of Dassl's."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Datum:
        return super().__new__(cls)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise PickleRefusedError(f"a Datum's state must be a dict, got {type(state).__name__}")
        self.__dict__.update(state)


class _DatumOnly(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == DATUM:
            return _Datum
        # protocols 0 and 1 rebuild objects through copyreg (Python 2 names kept in the file)
        if name == "object" and module in ("builtins", "__builtin__"):
            return object
        if name == "_reconstructor" and module in ("copyreg", "copy_reg"):
            return _reconstructor
        raise PickleRefusedError(
            f"{self.where}: the pickle names {module}.{name}; only Dassl's Datum is allowed "
            "(the file may run code: it is not read)"
        )


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if cls is not _Datum or base is not object:
        raise PickleRefusedError("a pickle reconstructs something other than a Datum")
    return _Datum.__new__(_Datum)


def _item(datum: Any, where: str) -> Item:
    if not isinstance(datum, _Datum):
        raise PickleRefusedError(f"{where}: expected Datum objects, got {type(datum).__name__}")
    d = datum.__dict__
    impath, label, classname, domain = (d.get(k) for k in ("_impath", "_label", "_classname", "_domain"))
    if (
        not isinstance(impath, str)
        or not impath
        or not isinstance(label, int)
        or isinstance(label, bool)
        or label < 0
        or not isinstance(classname, str)
    ):
        raise PickleRefusedError(
            f"{where}: expected a Datum with a path, a label >= 0 and a class name, got {d!r}"
        )
    return Item(impath, label, classname, domain if isinstance(domain, int) else 0)


def read_fewshot_pickle(
    path: str | os.PathLike[str], keys: tuple[str, ...] = ("train", "val")
) -> dict[str, list[Item]]:
    """Read a ``split_fewshot/shot_K-seed_S.pkl`` file (or ImageNet's ``preprocessed.pkl``,
    ``keys=("train", "test")``) without running pickle code.

    Args:
        path: the pickle.
        keys: the lists of ``Datum`` it must hold (ImageNet's few-shot files hold
            ``"train"`` only).

    Returns:
        ``{key: [...]}`` lists of :class:`~fdbpl.data.Item`, in file order (image paths as
        the file holds them: absolute paths of the machine that drew them).

    Raises:
        PickleRefusedError: the pickle names anything but Dassl's ``Datum``, holds
            something other than lists of them, a label < 0, or a label with two class names.
        InputValueError: a missing, truncated or non-regular file (a directory, a FIFO).
    """
    raw = read_file_bytes(path, "few-shot file", "a pickle of Dassl's few-shot draw")
    try:
        data = _DatumOnly(io.BytesIO(raw), str(path)).load()
    except PickleRefusedError:
        raise
    except Exception as e:  # a truncated or corrupt pickle raises many types
        raise InputValueError(
            f"few-shot file: {path} is not a readable pickle ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        wanted = ", ".join(f"{k!r}: [Datum, ...]" for k in keys)
        raise PickleRefusedError(f"{path}: expected {{{wanted}}}")
    out = {k: [_item(d, f"{path}: {k}[{i}]") for i, d in enumerate(data[k])] for k in keys}
    check_one_name_per_label(
        [(f"{k}[{i}]", item) for k in keys for i, item in enumerate(out[k])],
        f"few-shot file: {path}",
        PickleRefusedError,
    )
    return out
