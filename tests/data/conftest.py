"""A stand-in for Dassl's Datum under Dassl's module name, to write pickles as CoOp does."""

from __future__ import annotations

import sys
import types

import pytest


@pytest.fixture
def datum_class(monkeypatch):
    """A stand-in for Dassl's Datum, importable under Dassl's module name (for pickling)."""
    name = "dassl.data.datasets.base_dataset"
    module = types.ModuleType(name)

    class Datum:
        def __init__(self, impath="", label=0, domain=0, classname=""):
            self._impath, self._label, self._domain, self._classname = impath, label, domain, classname

    Datum.__module__, Datum.__qualname__ = name, "Datum"
    module.Datum = Datum
    for parent in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, parent, sys.modules.get(parent, types.ModuleType(parent)))
    monkeypatch.setitem(sys.modules, name, module)
    return Datum
