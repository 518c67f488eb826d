"""The fdbpl command and python -m fdbpl."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import fdbpl
from fdbpl.cli import main


def test_main_prints_help(capsys):
    assert main([]) == 0
    assert "usage: fdbpl" in capsys.readouterr().out


def test_python_m_fdbpl():
    out = subprocess.run(
        [sys.executable, "-m", "fdbpl", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fdbpl {fdbpl.__version__}"


@pytest.mark.skipif(
    shutil.which("fdbpl") is None, reason="console script not on PATH (package not installed)"
)
def test_console_script():
    out = subprocess.run(["fdbpl"], capture_output=True, text=True, check=True)
    assert "usage: fdbpl" in out.stdout
