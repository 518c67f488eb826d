"""The example script and the demo run from start to end."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("extra", [[], ["--no-student-features"]])
def test_coop_loop_example_runs(tmp_path, extra):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "coop_loop.py"),
            "--out",
            str(tmp_path),
            "--epochs",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"epoch 1: total -?\d", r.stdout)
    assert ("encoded from the replayed crops" if extra else "stored in the table") in r.stdout
    state = torch.load(tmp_path / "prompts.pt", weights_only=True)
    assert {"positive_context", "negative_context"} <= set(state)


def test_demo_prints_the_agreement_line_and_commands_that_continue_from_it(tmp_path, capsys, monkeypatch):
    from fdbpl.cli import main
    from fdbpl.demo import DemoConfig, run_demo

    result = run_demo(
        DemoConfig(
            out=tmp_path / "demo",
            images_per_class=3,
            held_out_per_class=2,
            fit_teacher_steps=5,
            crops_per_image=8,
            held_out_crops=4,
            epochs=2,
        )
    )
    text = capsys.readouterr().out
    assert "RANDOM-INITIALISED" in text and "--teacher-pretrained openai" in text
    line = text.strip().splitlines()[-1]
    assert re.fullmatch(
        r"agreement with teacher: before \d+\.\d% -> after \d+\.\d% \(chance \d+\.\d%\)", line
    ), line
    assert 0 <= result["before"] <= 100 and 0 <= result["after"] <= 100
    assert result["chance"] == pytest.approx(100 / 8)
    demo = tmp_path / "demo"
    for saved in ("demo-teacher.json", "demo-teacher.pt", "demo-student.json", "demo-student.pt"):
        assert (demo / saved).is_file(), saved
    assert sorted(p.name for p in (demo / "held-out").iterdir()) == sorted(
        p.name for p in (demo / "train").iterdir()
    )
    # every printed command runs as printed, offline, from what the demo saved
    commands = result["commands"]
    assert [c.split()[1] for c in commands] == ["build-cache", "inspect", "train", "evaluate"]
    for command in commands:
        assert "  " + command in text
        argv = shlex.split(command)
        assert argv[0] == "fdbpl"
        assert main([*argv[1:], *(["--no-progress"] if argv[1] in ("build-cache", "train") else [])]) == 0, (
            command
        )
    out = capsys.readouterr().out
    assert (demo / "cli-table.png").is_file() and (demo / "cli-run" / "checkpoint.pt").is_file()
    assert re.search(r"learned +\d+\.\d+", out), out[-500:]  # evaluate printed its accuracy
    # the rebuilt table is the demo's own (same images, teacher weights and seed)
    assert (demo / "cli-table" / "shard-00000" / "values.npy").read_bytes() == (
        demo / "table" / "shard-00000" / "values.npy"
    ).read_bytes()
