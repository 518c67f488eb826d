"""Importing the light subpackages never loads open_clip or torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module", ["fdbpl", "fdbpl.sparsify", "fdbpl.losses", "fdbpl.losses.functional", "fdbpl.prompts"]
)
def test_import_stays_light(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"
