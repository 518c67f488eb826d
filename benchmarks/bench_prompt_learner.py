"""DualPromptLearner vs a CoOp-style text pass: forward+backward of both prompt spaces.

    python benchmarks/bench_prompt_learner.py [--model ViT-B-32] [--classes 100 1000]

The student's text tower (random init, the named open_clip config) encodes the positive
and negative prompts of C ImageNet class names:
- fdbpl: DualPromptLearner.forward, both spaces in one pass, sequences cut to the
  longest tokenized prompt;
- coop: the same prompts at the full 77 tokens, one pass per space (CoOp's TextEncoder);
  above 200 classes the pass runs in chunks of 100 classes, since at C = 1000 one
  77-token forward+backward needs about 40 GB on the CPU (it was killed for memory here).
Printed: coop/fdbpl time (target >= 3x), measured side by side in one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import median_times

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = text_only_model(args.model)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, text tower of {args.model} (random init)"
    )
    print(f"{'C':>5} {'tokens fdbpl':>12} {'coop s/step':>12} {'fdbpl s/step':>12} {'coop/fdbpl':>11}")
    for c in args.classes:
        names = imagenet_names(c)
        learner = DualPromptLearner(model, names)
        full = DualPromptLearner(model, names, truncate=False)
        full.load_state_dict(learner.state_dict())

        def fdbpl_step(learner: DualPromptLearner = learner) -> None:
            pos, neg = learner()
            (pos.sum() + neg.sum()).backward()

        def coop_step(full: DualPromptLearner = full, c: int = c) -> None:
            # CoOp's forward+backward at 77 tokens, one pass per space; above 200 classes in
            # chunks of 100 (same arithmetic: at C = 1000 one pass needs ~40 GB on the CPU)
            chunks = (
                [list(range(c))] if c <= 200 else [list(range(i, min(i + 100, c))) for i in range(0, c, 100)]
            )
            for space in ("positive", "negative"):
                for classes in chunks:
                    x, pool = full.prompt_embeddings(space, classes)
                    full.tower.encode_embeddings(x, pool).sum().backward()

        repeats = args.repeats if c <= 200 else 1
        times = median_times({"coop": coop_step, "fdbpl": fdbpl_step}, repeats, torch.device("cpu"))
        print(
            f"{c:>5} {learner.sequence_length:>12} {times['coop']:>12.2f} {times['fdbpl']:>12.2f} "
            f"{times['coop'] / times['fdbpl']:>10.1f}x"
        )


if __name__ == "__main__":
    main()
