"""A training step of each base method with FDBPL: from the table vs with an online teacher,
and both spaces vs the positive space alone.

    python benchmarks/bench_methods.py [--methods coop cocoop vpt ivlp maple promptsrc]
        [--batch 32] [--classes 100] [--student ViT-B-32] [--teacher ViT-L-14] [--repeats 1]

Random-initialised open_clip models (the timings do not depend on the weights). Each step
starts from decoded images: a batch of regions replayed from the RIL table with their
stored labels, the method's learner (:func:`fdbpl.prompts.build_learner`) on them (the
deep methods run the prompted image tower with gradients; ``coop`` and ``cocoop`` the
frozen one), FDBPLLoss (Eq. 17; for ``promptsrc`` plus its self-regulating constraints,
with the frozen image features and template ensemble), backward. Timed side by side:

- table: that step;
- teacher: the teacher's image forward on the same regions at its own resolution (its
  text features cached) — what a step without a table adds, so online = table + teacher
  (the teacher's cost does not depend on the method: it is measured once per batch);
- positive: the same method with the positive space alone (its text features and the
  positive distillation of Eq. 9 only; for ``promptsrc`` with its own constraints), what
  the base method with a teacher's labels costs.

Printed per method: online/table (target >= 3) and table/positive (target <= 1.5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import median_times
from bench_prompt_learner import imagenet_names

from fdbpl import set_value_checks
from fdbpl.cache import RILTable, Teacher, build_table, scan_image_folder
from fdbpl.images import decode_image, render_crop
from fdbpl.logits import clip_logits
from fdbpl.losses import FDBPLLoss, PromptSRCLoss
from fdbpl.losses.functional import positive_distillation_loss
from fdbpl.prompts import PromptModel, build_learner
from fdbpl.prompts.ensemble import template_ensemble
from fdbpl.synthetic import draw_image_folder

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
#: The methods this benchmark times (their learners differ; kgcoop is coop's learner plus one term).
METHODS = ("coop", "cocoop", "vpt", "ivlp", "maple", "promptsrc")


def _side(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple) else size


def positive_features(prompts: PromptModel, image_features: torch.Tensor) -> torch.Tensor:
    """The positive space's text features alone, as the learner computes them."""
    learner = prompts.learner
    idx = learner.class_indices()
    if not learner.per_image:
        return learner._encode_space("positive", idx)
    (positive,) = learner.encode_contexts({"positive": learner.contexts(image_features)["positive"]}, idx)
    return positive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods (default: all)"
    )
    parser.add_argument(
        "--student", default="ViT-B-32", help="open_clip config of the student (default: ViT-B-32)"
    )
    parser.add_argument(
        "--teacher", default="ViT-L-14", help="open_clip config of the teacher (default: ViT-L-14)"
    )
    parser.add_argument("--classes", type=int, default=100, help="C (default: 100)")
    parser.add_argument("--batch", type=int, default=32, help="images per step (default: 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds per variant (default: 1)")
    args = parser.parse_args()
    set_value_checks(False)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = open_clip.create_model(args.student).eval()
        teacher = open_clip.create_model(args.teacher).eval()
    for p in [*student.parameters(), *teacher.parameters()]:
        p.requires_grad_(False)
    names = imagenet_names(args.classes)
    tmp = Path(tempfile.mkdtemp(prefix="fdbpl-bench-"))
    images = draw_image_folder(tmp / "img", per_class=max(1, args.batch // 8), size=(320, 256))
    scan = scan_image_folder(images)
    scan.classnames = names
    rand = Teacher(
        lambda x: torch.softmax(4 * torch.randn(x.shape[0], len(names)), 1), 8, (0.5,) * 3, (0.5,) * 3
    )
    build_table(
        images, tmp / "table", rand, scan=scan, crops_per_image=2, topk=min(20, len(names)), progress=False
    )
    table = RILTable.open(tmp / "table")
    decoded = [decode_image(images / p) for p in table.image_paths]
    region_ids = torch.arange(len(decoded)) * table.crops_per_image
    size_s, size_t = _side(student), _side(teacher)
    with torch.no_grad():
        tokens = open_clip.get_tokenizer(args.teacher)([f"a photo of a {c}." for c in names])
        teacher_text = F.normalize(teacher.encode_text(tokens), dim=-1)
    scale = student.logit_scale.exp()
    loss_fn = FDBPLLoss()

    def replay(size: int) -> torch.Tensor:
        regions = table.regions(region_ids)
        return torch.stack(
            [
                render_crop(img, b, bool(fl), size, MEAN, STD)
                for img, b, fl in zip(decoded, regions.boxes, regions.flips)
            ]
        )

    def teacher_step() -> None:
        with torch.no_grad():
            torch.softmax(
                100 * F.normalize(teacher.encode_image(replay(size_t)), dim=-1) @ teacher_text.T, dim=1
            )

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; student {args.student}, teacher "
        f"{args.teacher}, C = {args.classes}, batch {len(decoded)} (random init)"
    )
    print(f"{'method':<10} {'table s':>8} {'positive s':>11} {'online/table':>13} {'table/positive':>15}")
    teacher_time = None
    for method in args.methods:
        options = {"depth": 9} if method in ("ivlp", "maple", "promptsrc") else {}
        prompts = build_learner(method, student, names, **options)
        src = None
        if method == "promptsrc":
            src = (
                template_ensemble(student, names, ["a photo of a {}.", "a sketch of a {}."]),
                PromptSRCLoss(),
            )

        def table_step(prompts: PromptModel = prompts, src=src) -> None:
            x = replay(size_s)
            regions = table.regions(region_ids)
            f, pos, neg = prompts(x)
            total = loss_fn(f, pos, neg, regions.labels, regions.weights, scale).total
            if src is not None:
                with torch.no_grad():
                    frozen = student.encode_image(x)
                logits = clip_logits(f, pos, scale)
                total = (
                    total + src[1](f, frozen, pos, src[0], logits, clip_logits(frozen, src[0], scale)).total
                )
            total.backward()
            prompts.zero_grad()

        def positive_step(prompts: PromptModel = prompts, src=src) -> None:
            x = replay(size_s)
            regions = table.regions(region_ids)
            f = prompts.learner.encode_image(x) if prompts.prompts_images else prompts.image_features(x)
            pos = positive_features(prompts, f)
            logits = clip_logits(f, pos, scale)
            total = positive_distillation_loss(logits, regions.labels, regions.weights)
            if src is not None:  # the base method's own constraints belong to its step
                with torch.no_grad():
                    frozen = student.encode_image(x)
                total = (
                    total + src[1](f, frozen, pos, src[0], logits, clip_logits(frozen, src[0], scale)).total
                )
            total.backward()
            prompts.zero_grad()

        fns = {"table": table_step, "positive": positive_step}
        if teacher_time is None:
            fns["teacher"] = teacher_step
        times = median_times(fns, args.repeats, torch.device("cpu"))
        teacher_time = times.get("teacher", teacher_time)
        online = times["table"] + teacher_time
        print(
            f"{method:<10} {times['table']:>8.2f} {times['positive']:>11.2f} {online / times['table']:>12.1f}x "
            f"{times['table'] / times['positive']:>14.2f}x"
        )
    print(f"teacher's image forward on the batch: {teacher_time:.2f} s (online = table + teacher)")
    print("targets: online/table >= 3, table/positive <= 1.5")


if __name__ == "__main__":
    main()
