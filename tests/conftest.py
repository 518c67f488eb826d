"""Shared test configuration: hypothesis profiles; drawn images and a tiny teacher on disk."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch
from hypothesis import HealthCheck, settings
from tiny_models import EMBED_DIM, TEXT_CFG, VISION_CFG

from fdbpl.synthetic import draw_image_folder

# stand-ins of Dassl and CoOp's train.py: imported by the tests that put them on sys.path, not collected
collect_ignore_glob = ["standins/*"]

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=300)
settings.register_profile("fast", deadline=None, max_examples=15)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    return draw_image_folder(tmp_path_factory.mktemp("images") / "img", per_class=3, size=(72, 60))


@pytest.fixture(scope="session")
def teacher_files(tmp_path_factory):
    """(config JSON path, checkpoint path) of a tiny random CLIP, saved the way real weights are."""
    import open_clip

    folder = tmp_path_factory.mktemp("teacher")
    config = folder / "fdbpl-tiny-teacher.json"
    config.write_text(json.dumps({"embed_dim": EMBED_DIM, "vision_cfg": VISION_CFG, "text_cfg": TEXT_CFG}))
    open_clip.add_model_config(config)
    torch.manual_seed(123)
    model = open_clip.create_model("fdbpl-tiny-teacher")
    with torch.no_grad():  # a sharper teacher than random init, so Top-K and w vary
        model.logit_scale.fill_(5.0)
    checkpoint = folder / "teacher.pt"
    torch.save(model.state_dict(), checkpoint)
    return config, checkpoint


@pytest.fixture(scope="session")
def loaded_teacher(teacher_files):
    from fdbpl.models import load_open_clip

    config, checkpoint = teacher_files
    return load_open_clip(str(config), str(checkpoint))


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
