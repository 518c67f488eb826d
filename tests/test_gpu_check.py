"""benchmarks/gpu_check.py: says so and exits 0 without CUDA; runs every check on a device."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="this machine has CUDA: the script would run its checks"
)
def test_without_cuda_it_says_so_and_exits_0():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no CUDA device here; nothing to check" in r.stdout


def test_every_check_runs_and_passes_on_the_cpu():
    """The same checks on the CPU (small shapes): the script's own logic is exercised."""
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    for section in (
        "1. losses",
        "2. the prompt learner",
        "3. training steps",
        "4. torch.compile",
        "5. second-order",
    ):
        assert section in out, section
    assert "FAIL" not in out and out.strip().endswith("0 check(s) failed")
    assert out.count("  ok   ") >= 20


def test_a_failing_check_fails_the_script(monkeypatch, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    report = gpu_check.Report()
    report.check("a loss", 1e-2, 1e-4)
    report.check("another", 1e-6, 1e-4)
    assert report.failed == ["a loss"]
    assert "FAIL a loss" in capsys.readouterr().out
