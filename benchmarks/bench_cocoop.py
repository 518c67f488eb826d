"""CoCoOp's training step: fdbpl's dual learner (both spaces) vs the original recipe (one space).

    python benchmarks/bench_cocoop.py [--model ViT-B-32] [--classes 100] [--images 1 2] [--target-images 32]
    python benchmarks/bench_cocoop.py --device cuda --images 32

A CoCoOp step encodes N x C prompts: every image shifts the context, so every image has
its own text features for every class. Timed and measured, forward+backward of one step
on N images' (frozen) features and C ImageNet class names, the student's text tower at
random init (the named open_clip config):

- original: CoCoOp's recipe — one space, every prompt at the full 77 tokens, a loop over
  the images (its ``CustomCLIP.forward``), cross-entropy on the logits;
- fdbpl: :class:`~fdbpl.prompts.CoCoOpDualPromptLearner` — both spaces, sequences cut to
  the longest prompt, each image's start token and context computed once per space
  (``share_prefix``), one batched pass, and the full FDBPL loss (Eq. 17) on the per-image
  features;
- fdbpl-no-prefix: the same without ``share_prefix`` (truncation alone).

Both costs are linear in N (each image's prompts are independent), so on a CPU, where
N = 32 of the original recipe needs about 100 GB, the step is measured at the small N of
``--images`` and the per-image slope extrapolated to ``--target-images`` (the two sizes
also show the linearity). Peak memory is measured as in the other benchmarks
(``_measure.peak_bytes``: a child process on the CPU, ``max_memory_allocated`` on CUDA).
Printed: original/fdbpl time and memory at N = target (targets >= 3x each).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import malloc_env_active, median_times, mib, peak_bytes, run_with_malloc_env
from bench_prompt_learner import imagenet_names, text_only_model

from fdbpl.losses import FDBPLLoss
from fdbpl.prompts import CoCoOpDualPromptLearner

VARIANTS = ("original", "fdbpl", "fdbpl-no-prefix")


def learners(model: torch.nn.Module, c: int, device: torch.device) -> dict[str, CoCoOpDualPromptLearner]:
    names = imagenet_names(c)
    full = CoCoOpDualPromptLearner(model, names, truncate=False, share_prefix=False).to(device)
    shared = CoCoOpDualPromptLearner(model, names).to(device)
    plain = CoCoOpDualPromptLearner(model, names, share_prefix=False).to(device)
    for other in (shared, plain):
        other.load_state_dict(full.state_dict())
    assert shared.shares_prefix and full.sequence_length == model.positional_embedding.shape[0]
    return {"original": full, "fdbpl": shared, "fdbpl-no-prefix": plain}


def original_step(learner: CoCoOpDualPromptLearner, f: torch.Tensor, labels: torch.Tensor) -> None:
    """CoCoOp's step: per image, its shifted context in every class's 77-token prompt, one space."""
    idx = learner.class_indices()
    ctx = learner.contexts(f)["positive"]
    unit = F.normalize(f, dim=-1)
    logits = []
    for i in range(f.shape[0]):
        x, pool = learner._full_sequences("positive", ctx[i : i + 1], idx, learner.sequence_length)
        text = F.normalize(learner.tower.encode_embeddings(x, pool), dim=-1)
        logits.append(100.0 * unit[i] @ text.T)
    F.cross_entropy(torch.stack(logits), labels).backward()


def fdbpl_step(learner: CoCoOpDualPromptLearner, f: torch.Tensor, teacher: torch.Tensor) -> None:
    """fdbpl's step: both spaces' per-image features, the FDBPL loss (Eq. 17)."""
    positive, negative = learner(f)
    weight = torch.full((f.shape[0],), 0.5, device=f.device)
    FDBPLLoss()(f, positive, negative, teacher, weight).total.backward()


def steps(model: torch.nn.Module, c: int, n: int, device: torch.device) -> dict[str, object]:
    variants = learners(model, c, device)
    g = torch.Generator().manual_seed(n)
    f = torch.randn(n, variants["fdbpl"].feature_dim, generator=g).to(device)
    teacher = torch.softmax(torch.randn(n, c, generator=g), dim=1).to(device)
    labels = teacher.argmax(dim=1)
    return {
        "original": lambda: original_step(variants["original"], f, labels),
        "fdbpl": lambda: fdbpl_step(variants["fdbpl"], f, teacher),
        "fdbpl-no-prefix": lambda: fdbpl_step(variants["fdbpl-no-prefix"], f, teacher),
    }


def measure_memory(model: torch.nn.Module, c: int, sizes: list[int], device: torch.device) -> dict[str, int]:
    out = {}
    for n in sizes:
        for name, fn in steps(model, c, n, device).items():
            out[f"{name}@{n}"] = peak_bytes(fn, device)
    return out


def at_target(values: dict[int, float], target: int) -> float:
    """The value at N = target from the measured sizes: the slope of the last two, or
    proportional from one."""
    sizes = sorted(values)
    if target in values:
        return values[target]
    if len(sizes) == 1:
        return values[sizes[0]] * target / sizes[0]
    a, b = sizes[-2], sizes[-1]
    slope = (values[b] - values[a]) / (b - a)
    return values[b] + slope * (target - b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="ViT-B-32", help="open_clip config of the text tower (default: ViT-B-32)"
    )
    parser.add_argument("--classes", type=int, default=100, help="C, ImageNet class names (default: 100)")
    parser.add_argument(
        "--images", type=int, nargs="+", default=[1, 2], help="N values measured (default: 1 2)"
    )
    parser.add_argument(
        "--target-images", type=int, default=32, help="N reported, extrapolated linearly (default: 32)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per variant (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = text_only_model(args.model).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    if args.memory_json:
        print(json.dumps(measure_memory(model, args.classes, args.images, device)))
        return
    if device.type == "cpu" and not malloc_env_active():
        argv = [__file__, "--memory-json", "--model", args.model, "--classes", str(args.classes)]
        memory = json.loads(run_with_malloc_env([*argv, "--images", *map(str, args.images)]))
    else:
        memory = measure_memory(model, args.classes, args.images, device)
    times: dict[str, dict[int, float]] = {name: {} for name in VARIANTS}
    for n in args.images:
        for name, value in median_times(steps(model, args.classes, n, device), args.repeats, device).items():
            times[name][n] = value
    print(
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, text tower of {args.model} "
        f"(random init), C = {args.classes}; one step, forward+backward"
    )
    print(f"{'variant':<16} {'N':>4} {'s/step':>9} {'peak memory':>14}")
    for name in VARIANTS:
        for n in args.images:
            print(f"{name:<16} {n:>4} {times[name][n]:>9.3f} {mib(memory[f'{name}@{n}']):>14}")
    for n in args.images:
        print(
            f"  measured at N = {n}: original / fdbpl time {times['original'][n] / times['fdbpl'][n]:.1f}x, "
            f"memory {memory[f'original@{n}'] / memory[f'fdbpl@{n}']:.1f}x"
        )
    target = args.target_images
    at = {
        name: (
            at_target(times[name], target),
            at_target({n: float(memory[f"{name}@{n}"]) for n in args.images}, target),
        )
        for name in VARIANTS
    }
    how = (
        "measured"
        if target in args.images
        else f"extrapolated linearly from N = {', '.join(map(str, args.images))}"
    )
    print(f"at N = {target} ({how}):")
    for name in VARIANTS:
        print(f"  {name:<16} {at[name][0]:>9.2f} s/step {mib(at[name][1]):>14}")
    for name in ("fdbpl", "fdbpl-no-prefix"):
        print(
            f"  original / {name}: time {at['original'][0] / at[name][0]:.1f}x, memory "
            f"{at['original'][1] / at[name][1]:.1f}x  (targets >= 3x each, fdbpl with both spaces)"
        )


if __name__ == "__main__":
    main()
