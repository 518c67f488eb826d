"""A training run's folder: the one module that names, writes and reads its files.

.. code-block:: text

   run/
     config.json     the run's settings (JSON), written when the run starts
     log.jsonl       one JSON line per step (every loss part, the learning rate) and per epoch
     checkpoint.pt   after every epoch: both prompt spaces, optimizer, schedule, settings

See ``docs/run-format.rst`` for every field. The checkpoint is read with
``torch.load(..., weights_only=True)``: a run folder from a stranger cannot run code.
Writes are atomic (a temporary file renamed into place).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

import torch

from fdbpl.cache.storage import write_bytes_atomic, write_json_atomic
from fdbpl.errors import InputValueError

__all__ = ["CHECKPOINT", "CONFIG", "LOG", "RunFolder", "load_run"]

#: The checkpoint written after every epoch.
CHECKPOINT = "checkpoint.pt"
#: The per-step and per-epoch log, one JSON object a line.
LOG = "log.jsonl"
#: The settings the run started with.
CONFIG = "config.json"


class RunFolder:
    """The files of one training run (see the module's description)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def has_checkpoint(self) -> bool:
        """Whether at least one epoch finished."""
        return (self.path / CHECKPOINT).is_file()

    def load_checkpoint(self) -> dict[str, Any]:
        """The last checkpoint (``weights_only``), upgraded from fdbpl 0.1's layout where needed."""
        path = self.path / CHECKPOINT
        if not path.is_file():
            epochs = [p.name.rsplit("-", 1)[-1] for p in self.path.glob("prompt_learner/model.pth.tar-*")]
            if epochs:
                last = max(epochs, key=lambda e: int(e) if e.isdigit() else -1)
                raise InputValueError(
                    f"run: {self.path} is an output folder of CoOp's train.py (prompt_learner/model.pth.tar-{last}), "
                    f"not an fdbpl train run; evaluate it with CoOp's train.py --eval-only --model-dir {self.path} "
                    f"--load-epoch {last} (examples/dassl/scripts/base2new_test.sh)"
                )
            raise InputValueError(f"run: {path} does not exist (no finished epoch in {self.path})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        extra = state.get("learner", {}).get("_extra_state")
        if isinstance(extra, dict) and "inits" not in extra and "inits" in state:
            extra["inits"] = dict(state["inits"])  # 0.1 kept the init phrases beside the learner
        return state

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.path / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.path / CHECKPOINT)

    def write_config(self, config: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / CONFIG, config)

    def read_config(self) -> dict[str, Any]:
        """The settings the run started with, or ``{}`` for a folder without them."""
        path = self.path / CONFIG
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputValueError(f"run: {path} is not valid JSON ({e})") from None

    def settings(self, checkpoint: dict[str, Any]) -> dict[str, Any]:
        """The settings a checkpoint was trained with (fdbpl 0.1 kept them in config.json only)."""
        return checkpoint.get("settings") or self.read_config()

    def student(self) -> dict[str, Any]:
        """What the run recorded about its student (name, source, weights, seed), or ``{}``."""
        if self.has_checkpoint():
            recorded = self.load_checkpoint().get("student")
            if recorded:
                return dict(recorded)
        return dict(self.read_config().get("student", {}))

    def trim_log(self, epochs_kept: int) -> None:
        """Keep the log lines of the first ``epochs_kept`` epochs: a resumed run writes the
        rest again. A line cut short (a kill or a full disk mid-write) is dropped too."""
        path = self.path / LOG
        if not path.is_file():
            return
        kept = []
        for line in path.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("epoch"), int)
                and entry["epoch"] < epochs_kept
            ):
                kept.append(line)
        write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode("utf-8"))

    def open_log(self) -> IO[str]:
        """The log, for appending lines."""
        self.path.mkdir(parents=True, exist_ok=True)
        return open(self.path / LOG, "a", encoding="utf-8")

    def start_afresh(self) -> None:
        """Remove the checkpoint and the log, so that the next ``train`` starts over."""
        for name in (CHECKPOINT, LOG):
            (self.path / name).unlink(missing_ok=True)


def load_run(run: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run's checkpoint (``weights_only``: no arbitrary code)."""
    return RunFolder(run).load_checkpoint()
