"""Side-by-side timing and peak-memory measurement for the benchmarks (CPU or CUDA).

Times are medians over interleaved repeats, so every variant sees the same machine
noise; report ratios, not absolute times. Peak memory on the CPU is the growth of the
process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) while
one call runs, measured in a child process whose glibc gives large blocks back to the
system at once (so a freed tensor cannot hide the next one); on CUDA it is
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}

#: glibc settings under which freed memory stays in the process for reuse, as under a
#: caching allocator (PyTorch's CUDA one; jemalloc or tcmalloc on the CPU, which PyTorch's
#: CPU tuning guide recommends). Under glibc's defaults a large tensor freed at the top of
#: the heap goes back to the system, and the next one pays a page fault per 4 KiB page.
CACHING_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def _run(argv: list[str], settings: dict[str, str]) -> str:
    env = {**os.environ, **settings}
    return subprocess.run([sys.executable, *argv], env=env, check=True, capture_output=True, text=True).stdout


def run_with_malloc_env(argv: list[str]) -> str:
    """Run ``python argv...`` with glibc settings that make RSS track live tensors; return stdout.

    Peak memory is measured in such a child process; times are not, because those
    settings make every large allocation a fresh mmap and slow allocation-heavy code.
    """
    return _run(argv, _MALLOC_ENV)


def run_with_caching_malloc(argv: list[str]) -> str:
    """Run ``python argv...`` under :data:`CACHING_MALLOC_ENV`; return stdout."""
    return _run(argv, CACHING_MALLOC_ENV)


def malloc_env_active() -> bool:
    return all(os.environ.get(k) == v for k, v in _MALLOC_ENV.items())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_times(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median wall time of each callable over ``repeats`` interleaved rounds (after one warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Extra memory at the peak of one call of ``fn``, in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def mib(n: float) -> str:
    return f"{n / 2**20:8.1f} MiB"
