"""Importing the light subpackages never loads open_clip or torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "fdbpl",
        "fdbpl.sparsify",
        "fdbpl.losses",
        "fdbpl.losses.functional",
        "fdbpl.prompts",
        "fdbpl.cache",
        "fdbpl.data",
    ],
)
def test_import_stays_light(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('open_clip', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


@pytest.mark.parametrize("module", ["fdbpl.cache", "fdbpl.prompts", "fdbpl.sparsify", "fdbpl.logits"])
def test_cache_and_prompts_sit_beside_the_losses_not_above_them(module):
    """Cache, prompts and losses are siblings: importing one alone loads no fdbpl.losses module."""
    code = (
        f"import sys, {module}\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'fdbpl.losses' or m.startswith('fdbpl.losses.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"
