"""The one home of fdbpl's ``torch.distributed`` helpers: set-up, rank, barrier, teardown.

Everything works without a process group too: one process is rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["barrier", "broadcast_from_rank0", "is_distributed", "process_group", "rank_and_world"]


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` without a process group."""
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a JSON-like Python object)."""
    if not is_distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextmanager
def process_group() -> Iterator[tuple[int, str]]:
    """Join the ``torchrun`` process group when there is one, and leave it at the end.

    Yields ``(local rank, device kind)``: the GPU index of this process and ``"cuda"``
    where CUDA is available, else ``"cpu"``. A group this function did not create (the
    caller's) is left alone.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if world > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
        created = True
    try:
        yield local_rank, "cuda" if torch.cuda.is_available() else "cpu"
    finally:
        if created and is_distributed():
            torch.distributed.destroy_process_group()
