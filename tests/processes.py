"""Running the fdbpl command in subprocesses, alone or under torchrun, for the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def single_thread_env() -> dict[str, str]:
    """torchrun gives each process one thread; reference runs use the same, for identical floats."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fdbpl_command(*args: object, nproc: int = 1) -> list[str]:
    """``python -m fdbpl ARGS``, or the same under ``torchrun --nproc_per_node NPROC``."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
    return [*launcher, "-m", "fdbpl", *map(str, args)]


def run_fdbpl(*args: object, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the command; fail with the head and the tail of its stderr if it does not exit 0."""
    r = subprocess.run(
        fdbpl_command(*args, nproc=nproc),
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[:4000] + "\n...\n" + r.stderr[-2000:]
    return r


def teacher_args(teacher_files) -> list[str]:
    """``--teacher CONFIG --pretrained CHECKPOINT`` for the tests' tiny teacher on disk."""
    config, checkpoint = teacher_files
    return ["--teacher", str(config), "--pretrained", str(checkpoint)]


def student_args(teacher_files) -> list[str]:
    """``--student CONFIG --pretrained CHECKPOINT``: the tests' tiny CLIP as a run's student."""
    config, checkpoint = teacher_files
    return ["--student", str(config), "--pretrained", str(checkpoint)]
