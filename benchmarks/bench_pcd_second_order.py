"""Fused vs naive second-order difference loss (Eq. 16): forward+backward time and peak memory.

    python benchmarks/bench_pcd_second_order.py [--device cuda] [--repeats 5]

For N in {32, 128, 512}, C in {100, 1000} and D = 512 it measures, in one process:
- naive: the broadcast form that builds the (N, N, D) tensor of difference vectors;
- fused: fdbpl.losses.functional.second_order_difference_loss;
- floor: forward+backward of the one product f @ D1ᵀ that any implementation needs;
- float32 products: the fused loss with its centring and forward products in float32
  instead of float64 (pcd.products_dtype) and its distances by the Gram expansion, as
  before near ties were resolved;
- its products: the fused loss's four matrix products alone, at its shapes (the two
  forward ones in pcd.products_dtype, the two backward ones in the inputs' dtype), the
  part of its time that no rewrite of its other operations removes.
Printed: naive/fused time and memory ratios (targets at N=512, C=1000: >= 5x and >= 10x),
fused/floor time (target <= 3x), its products/floor, what resolving near ties costs
(fused / float32 products; target <= 1.2x), and which sums the fused loss runs (over
item pairs or over classes). On the CPU fused/floor is printed twice: under glibc's default
allocator, where each fresh large temporary of the fused loss pays page faults (on the
2-core development machine about 1.5 µs per 4 KiB page), and in a second process under
_measure.CACHING_MALLOC_ENV, which keeps freed memory as a caching allocator does
(PyTorch's CUDA allocator always; jemalloc or tcmalloc on the CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _measure import (
    malloc_env_active,
    median_times,
    mib,
    peak_bytes,
    run_with_caching_malloc,
    run_with_malloc_env,
)
from references import naive_broadcast_second

from fdbpl import set_value_checks
from fdbpl.losses.functional import pcd, second_order_difference_loss


def make_inputs(n: int, c: int, d: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    neg = torch.randn(c, d, generator=gen)
    pos = neg + 3.0 * torch.randn(1, d, generator=gen) + 0.1 * torch.randn(c, d, generator=gen)
    f = torch.randn(n, d, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    w = torch.rand(n, generator=gen)
    pos, neg = (t.to(device).requires_grad_() for t in (pos, neg))
    return f.to(device), pos, neg, labels.to(device), w.to(device)


def variants(f, pos, neg, labels, w):
    def step(loss_fn):
        def run():
            loss = loss_fn()
            loss.backward()
            pos.grad = neg.grad = None

        return run

    def float32_products():
        with (
            mock.patch.object(pcd, "products_dtype", lambda dtype, device: dtype),
            mock.patch.object(pcd, "distances_built_directly", lambda dtype, wide: False),
        ):
            return second_order_difference_loss(f, pos, neg, labels, w, delta=0.1)

    # the fused loss's products: e holds M = N (items) or C (classes) difference vectors
    n, c = f.shape[0], pos.shape[0]
    m = n if pcd.second_order_path(n, c) == "items" else c  # items only when C >= N
    e = (pos - neg).detach()[:m]
    wide = pcd.products_dtype(f.dtype, f.device)
    grad_p, grad_g = torch.randn(m, n, device=f.device), torch.randn(m, m, device=f.device)

    def products():
        f_wide, e_wide = f.to(wide), e.to(wide)
        return f_wide @ e_wide.T, e_wide @ e_wide.T, grad_p @ f, grad_g @ e

    return {
        "naive": step(lambda: naive_broadcast_second(f, pos, neg, labels, w, 0.1)),
        "fused": step(lambda: second_order_difference_loss(f, pos, neg, labels, w, delta=0.1)),
        "floor": step(lambda: (f @ (pos - neg).T).sum()),
        "float32 products": step(float32_products),
        "its products": products,
    }


SIZES = [(n, c) for c in (100, 1000) for n in (32, 128, 512)]


def measure_memory(device: torch.device, dim: int) -> dict[str, dict[str, int]]:
    out = {}
    for n, c in SIZES:
        fns = variants(*make_inputs(n, c, dim, device))
        del fns["float32 products"], fns["its products"]
        for fn in fns.values():
            fn()  # warm up: first calls allocate lazily-initialised buffers
        out[f"{n},{c}"] = {name: max(peak_bytes(fn, device), 1) for name, fn in fns.items()}
    return out


def fused_over_floor(device: torch.device, dim: int, repeats: int) -> dict[str, float]:
    """fused/floor time at each size (without the naive form, which is slow)."""
    out = {}
    for n, c in SIZES:
        fns = variants(*make_inputs(n, c, dim, device))
        del fns["naive"], fns["float32 products"], fns["its products"]
        times = median_times(fns, repeats, device)
        out[f"{n},{c}"] = times["fused"] / times["floor"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where to run: cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per variant (default: 7)")
    parser.add_argument("--dim", type=int, default=512, help="feature width D (default: 512)")
    parser.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--times-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    set_value_checks(False)  # measure the maths, not the input checks' host syncs
    if args.memory_json:
        print(json.dumps(measure_memory(device, args.dim)))
        return
    if args.times_json:
        print(json.dumps(fused_over_floor(device, args.dim, args.repeats)))
        return
    cached = None
    if device.type == "cpu" and not malloc_env_active():
        argv = [__file__, "--device", args.device, "--dim", str(args.dim), "--repeats", str(args.repeats)]
        memory = json.loads(run_with_malloc_env([*argv, "--memory-json"]))
        cached = json.loads(run_with_caching_malloc([*argv, "--times-json"]))
    else:
        memory = measure_memory(device, args.dim)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, D = {args.dim}")
    header = (
        f"{'N':>5} {'C':>5} {'sums over':>9} | {'naive/fused time':>16} {'naive/fused mem':>15} "
        f"{'fused/floor time':>16}{' (caching malloc)' if cached else ''} {'its products/floor':>18} "
        f"{'near-tie cost':>13} | "
        f"{'fused mem':>12} {'naive mem':>12}"
    )
    print(header)
    print("-" * len(header))
    for n, c in SIZES:
        times = median_times(variants(*make_inputs(n, c, args.dim, device)), args.repeats, device)
        mem = memory[f"{n},{c}"]
        floor = f"{times['fused'] / times['floor']:>15.2f}x"
        if cached:
            floor += f" {cached[f'{n},{c}']:>15.2f}x "
        print(
            f"{n:>5} {c:>5} {pcd.second_order_path(n, c):>9} | {times['naive'] / times['fused']:>15.1f}x "
            f"{mem['naive'] / mem['fused']:>14.1f}x {floor} {times['its products'] / times['floor']:>17.2f}x "
            f"{times['fused'] / times['float32 products']:>12.2f}x | "
            f"{mib(mem['fused'])} {mib(mem['naive'])}"
        )


if __name__ == "__main__":
    main()
