"""DualPromptLearner vs a CoOp-style text pass: forward+backward of both prompt spaces.

    python benchmarks/bench_prompt_learner.py [--model ViT-B-32] [--classes 100 1000]
    python benchmarks/bench_prompt_learner.py --memory [--memory-classes 1000] [--chunk 100]
    python benchmarks/bench_prompt_learner.py --prefix [--classes 100]

The student's text tower (random init, the named open_clip config) encodes the positive
and negative prompts of C ImageNet class names:
- fdbpl: DualPromptLearner.forward, both spaces in one pass, sequences cut to the
  longest tokenized prompt;
- coop: the same prompts at the full 77 tokens, one pass per space (CoOp's TextEncoder);
  above 200 classes the pass runs in chunks of 100 classes, since at C = 1000 one
  77-token forward+backward needs about 40 GB on the CPU (it was killed for memory here).
Printed: coop/fdbpl time (target >= 3x), measured side by side in one process.

``--memory``: peak memory of one forward+backward text pass at C classes (default 1000):
fdbpl unchunked, fdbpl with ``class_chunk_size`` (default 100), and CoOp's 77-token pass
of one space at C / 10 and C / 5 classes, extrapolated linearly to C (at C = 1000 it needs
about 40 GB, more than this machine has; activations grow linearly with C). Targets:
chunked <= 1/10 of unchunked and <= 1/20 of CoOp; chunked time <= 1.25x unchunked. The
time ratio is printed twice: in-process under glibc's default allocator, and in a child
process under _measure.CACHING_MALLOC_ENV (freed memory kept, as CUDA's allocator does).

``--prefix``: whether computing the shared start of every class's prompt once pays.
With ``class_token_position="end"`` and a shared context, the first 1 + n_ctx positions of
every prompt of a space are the same and, under causal attention, so are their activations
at every layer. The learner's ``share_prefix`` pass (the default) is timed against the
full pass, and against the pass over the rest of each prompt alone (the prefix dropped:
the least any prefix-sharing pass computes per class, a bound).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import (
    malloc_env_active,
    median_times,
    mib,
    peak_bytes,
    run_with_caching_malloc,
    run_with_malloc_env,
)

from fdbpl.prompts import DualPromptLearner


def imagenet_names(c: int) -> list[str]:
    """The first C ImageNet class names; its two repeated names ('missile', 'sunglasses') get a suffix."""
    names: list[str] = []
    for name in IMAGENET_CLASSNAMES[:c]:
        names.append(f"{name} 2" if name in names else name)
    return names


def text_only_model(name: str) -> torch.nn.Module:
    cfg = open_clip.get_model_config(name)
    cfg["vision_cfg"] = dict(image_size=32, patch_size=16, width=64, layers=1)  # the image tower is not timed
    return open_clip.CLIP(**cfg).eval()


def coop_pass(full: DualPromptLearner, classes: list[int]) -> None:
    """CoOp's forward+backward at the full context length, one space (its TextEncoder)."""
    x, pool = full.prompt_embeddings("positive", classes)
    full.tower.encode_embeddings(x, pool).sum().backward()


def fdbpl_pass(learner: DualPromptLearner) -> None:
    pos, neg = learner()
    (pos.sum() + neg.sum()).backward()


def measure_memory(model: torch.nn.Module, c: int, chunk: int) -> dict[str, int]:
    """Peak bytes of each text pass (run in a child process with the malloc settings)."""
    names = imagenet_names(c)
    learner = DualPromptLearner(model, names)
    chunked = DualPromptLearner(model, names, class_chunk_size=chunk)
    out = {
        "fdbpl": peak_bytes(lambda: fdbpl_pass(learner), torch.device("cpu")),
        "chunked": peak_bytes(lambda: fdbpl_pass(chunked), torch.device("cpu")),
    }
    for part in (c // 10, c // 5):
        full = DualPromptLearner(model, names[:part], truncate=False, share_prefix=False)
        out[f"coop@{part}"] = peak_bytes(
            lambda full=full, part=part: coop_pass(full, list(range(part))), torch.device("cpu")
        )
    return out


def chunked_over_unchunked(model: torch.nn.Module, c: int, chunk: int, repeats: int) -> float:
    """Time of the chunked text pass over the unchunked one (interleaved rounds)."""
    names = imagenet_names(c)
    learner, chunked = (
        DualPromptLearner(model, names),
        DualPromptLearner(model, names, class_chunk_size=chunk),
    )
    times = median_times(
        {"unchunked": lambda: fdbpl_pass(learner), "chunked": lambda: fdbpl_pass(chunked)},
        repeats,
        torch.device("cpu"),
    )
    return times["chunked"] / times["unchunked"]


def memory_report(args: argparse.Namespace, model: torch.nn.Module) -> None:
    c, chunk = args.memory_classes, args.chunk
    argv = [__file__, "--model", args.model, "--memory-classes", str(c), "--chunk", str(chunk)]
    cached = None
    if not malloc_env_active():
        memory = json.loads(run_with_malloc_env([*argv, "--memory-json"]))
        cached = json.loads(run_with_caching_malloc([*argv, "--repeats", str(args.repeats), "--times-json"]))
    else:
        memory = measure_memory(model, c, chunk)
    small, large = c // 10, c // 5
    per_class = (memory[f"coop@{large}"] - memory[f"coop@{small}"]) / (large - small)
    coop = memory[f"coop@{large}"] + per_class * (c - large)
    ratio = chunked_over_unchunked(model, c, chunk, args.repeats)
    print(f"peak memory of one text pass, forward+backward, C = {c}, {args.model} text tower:")
    print(f"  fdbpl, both spaces, unchunked        {mib(memory['fdbpl'])}")
    print(f"  fdbpl, both spaces, chunks of {chunk:<5}  {mib(memory['chunked'])}")
    print(
        f"  CoOp, 77 tokens, one space           {mib(coop)}  (measured {mib(memory[f'coop@{small}']).strip()} "
        f"at C = {small}, {mib(memory[f'coop@{large}']).strip()} at C = {large}; linear in C)"
    )
    print(f"  chunked / unchunked memory  {memory['chunked'] / memory['fdbpl']:.3f}  (target <= 0.1)")
    print(f"  chunked / CoOp memory       {memory['chunked'] / coop:.3f}  (target <= 0.05)")
    print(f"  chunked / unchunked time    {ratio:.2f}   (target <= 1.25; glibc's default allocator)")
    if cached is not None:
        print(f"  chunked / unchunked time    {cached:.2f}   (under a caching allocator, see below)")
        print(
            "  Under glibc's defaults the unchunked pass's activations (GBs) come back from the system\n"
            "  page by page; a caching allocator (CUDA's, or jemalloc/tcmalloc) keeps them, and the\n"
            "  chunked pass then costs 1 + F/(F+B) of the unchunked one, F the no-grad forward it\n"
            "  repeats (about half of forward+backward when the tower is frozen)."
        )


def prefix_report(args: argparse.Namespace, model: torch.nn.Module) -> None:
    print(
        "the shared prompt start (1 + n_ctx tokens per space) computed once (share_prefix), forward+backward"
    )
    print(
        f"{'C':>5} {'tokens':>6} {'prefix':>6} {'full s':>8} {'shared s':>9} {'full/shared':>11} "
        f"{'bound s':>8} {'full/bound':>10}"
    )
    for c in args.classes:
        names = imagenet_names(c)
        full = DualPromptLearner(model, names, share_prefix=False)
        shared = DualPromptLearner(model, names)
        assert shared.shares_prefix
        skip = 1 + full.n_ctx["positive"]

        def bound(learner: DualPromptLearner = full, skip: int = skip) -> None:
            # the prompts without their shared start (pooling shifted): no prefix-sharing pass
            # can do less per class than this
            pos, pool_p = learner.prompt_embeddings("positive")
            neg, pool_n = learner.prompt_embeddings("negative")
            x = torch.cat([pos, neg])[:, skip:]
            pool = torch.cat([pool_p, pool_n]) - skip
            learner.tower.encode_embeddings(x, pool).sum().backward()

        times = median_times(
            {"full": lambda f=full: fdbpl_pass(f), "shared": lambda s=shared: fdbpl_pass(s), "bound": bound},
            args.repeats,
            torch.device("cpu"),
        )
        print(
            f"{c:>5} {full.sequence_length:>6} {skip:>6} {times['full']:>8.2f} {times['shared']:>9.2f} "
            f"{times['full'] / times['shared']:>10.2f}x {times['bound']:>8.2f} {times['full'] / times['bound']:>9.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="ViT-B-32", help="open_clip config of the text tower (default: ViT-B-32)"
    )
    parser.add_argument(
        "--classes", type=int, nargs="+", default=[100, 1000], help="C values (default: 100 1000)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per variant (default: 2)")
    parser.add_argument(
        "--memory", action="store_true", help="peak memory of chunked, unchunked and CoOp passes"
    )
    parser.add_argument("--memory-classes", type=int, default=1000, help="C for --memory (default: 1000)")
    parser.add_argument("--chunk", type=int, default=100, help="class_chunk_size for --memory (default: 100)")
    parser.add_argument(
        "--prefix", action="store_true", help="time the shared-prompt-start pass against the full one"
    )
    parser.add_argument("--memory-json", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--times-json", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    torch.manual_seed(0)
    model = text_only_model(args.model)
    if args.memory_json:
        print(json.dumps(measure_memory(model, args.memory_classes, args.chunk)))
        return
    if args.times_json:
        print(json.dumps(chunked_over_unchunked(model, args.memory_classes, args.chunk, args.repeats)))
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, text tower of {args.model} (random init)"
    )
    if args.memory:
        memory_report(args, model)
        return
    if args.prefix:
        prefix_report(args, model)
        return
    print(f"{'C':>5} {'tokens fdbpl':>12} {'coop s/step':>12} {'fdbpl s/step':>12} {'coop/fdbpl':>11}")
    for c in args.classes:
        names = imagenet_names(c)
        learner = DualPromptLearner(model, names)
        full = DualPromptLearner(model, names, truncate=False, share_prefix=False)
        full.load_state_dict(learner.state_dict())

        def coop_step(full: DualPromptLearner = full, c: int = c) -> None:
            # CoOp's forward+backward at 77 tokens, one pass per space; above 200 classes in
            # chunks of 100 (same arithmetic: at C = 1000 one pass needs ~40 GB on the CPU)
            chunks = (
                [list(range(c))] if c <= 200 else [list(range(i, min(i + 100, c))) for i in range(0, c, 100)]
            )
            for _ in ("positive", "negative"):
                for classes in chunks:
                    coop_pass(full, classes)

        repeats = args.repeats if c <= 200 else 1
        times = median_times(
            {"coop": coop_step, "fdbpl": lambda learner=learner: fdbpl_pass(learner)},
            repeats,
            torch.device("cpu"),
        )
        print(
            f"{c:>5} {learner.sequence_length:>12} {times['coop']:>12.2f} {times['fdbpl']:>12.2f} "
            f"{times['coop'] / times['fdbpl']:>10.1f}x"
        )


if __name__ == "__main__":
    main()
