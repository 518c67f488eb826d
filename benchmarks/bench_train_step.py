"""One training step (C = 100): CoOp vs FDBPL from the table (with and without stored
student features) vs an online teacher.

    python benchmarks/bench_train_step.py [--batch 32 128] [--repeats 2] [--student ViT-B-32]
        [--teacher ViT-L-14] [--skip-online]

Random-initialised open_clip models (the timings do not depend on the weights). Each step
starts from decoded images and includes everything the method does per step:
- coop: random-resized crops, student image features, the positive prompts at CoOp's
  77 tokens, cross-entropy on hard labels, backward (coop_cut: the same with the prompts
  cut to their real length, to isolate what FDBPL itself adds);
- fdbpl: a batch of regions replayed from the RIL table with their stored labels, student
  image features, both prompt spaces in one cut pass, FDBPLLoss (Eq. 17), backward;
- cached: fdbpl's step from a table that stores the student's image features (built
  with ``student=``): no image is decoded and the image encoder does not run
  (cached_full: the same with ``share_prefix=False``, every prompt computed in full);
- online: fdbpl's step plus the teacher's image forward on the same crops (its text
  features cached), the way distillation-based prompt learning runs without a table.
Printed, side by side per batch size: fdbpl/coop (target <= 1.15), cached/coop (targets
<= 0.3 at batch 32, <= 0.2 at batch 128), fdbpl/cached (target >= 1.4), online/fdbpl
(target >= 4.5), and one epoch of a 16-shot, 100-class table (1600 images, one region
each) in steps of the batch size.
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
from fdbpl.cache import RILTable, Teacher, build_table, clip_student_features, scan_image_folder
from fdbpl.cache.crops import CropSampler
from fdbpl.images import InputRecipe, decode_image, render_crop
from fdbpl.losses import FDBPLLoss
from fdbpl.prompts import DualPromptLearner
from fdbpl.sparsify import SparseSoftLabels
from fdbpl.synthetic import draw_image_folder

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--student", default="ViT-B-32", help="open_clip config of the student (default: ViT-B-32)"
    )
    parser.add_argument(
        "--teacher", default="ViT-L-14", help="open_clip config of the teacher (default: ViT-L-14)"
    )
    parser.add_argument("--classes", type=int, default=100, help="C (default: 100)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[32, 128], help="batch sizes (default: 32 128)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per variant (default: 2)")
    parser.add_argument("--skip-online", action="store_true", help="do not time the online teacher")
    args = parser.parse_args()
    set_value_checks(False)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = open_clip.create_model(args.student).eval()
        teacher = None if args.skip_online else open_clip.create_model(args.teacher).eval()
    for p in student.parameters():
        p.requires_grad_(False)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; student {args.student}, "
        f"teacher {args.teacher}, C = {args.classes} (random init)"
    )
    for batch in args.batch:
        bench_one_batch(args, student, teacher, batch)


def _side(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, tuple) else size


def bench_one_batch(args: argparse.Namespace, student: torch.nn.Module, teacher, batch: int) -> None:
    names = imagenet_names(args.classes)
    size_s = _side(student)
    tmp = Path(tempfile.mkdtemp(prefix="fdbpl-bench-"))
    images = draw_image_folder(tmp / "img", per_class=max(1, batch // 8), size=(320, 256))
    scan = scan_image_folder(images)
    scan.classnames = names
    rand = Teacher(
        lambda x: torch.softmax(4 * torch.randn(x.shape[0], len(names)), 1), 8, (0.5,) * 3, (0.5,) * 3
    )
    features = clip_student_features(student, InputRecipe(size_s, MEAN, STD), {"name": args.student})
    # 2 crops per image: the step replays one region of each image; the student encodes all at build time
    build_table(
        images, tmp / "table", rand, student=features, scan=scan, crops_per_image=2, topk=20, progress=False
    )
    table = RILTable.open(tmp / "table")
    decoded = [decode_image(images / p) for p in table.image_paths]
    region_ids = torch.arange(len(decoded)) * table.crops_per_image

    # CoOp: 77 tokens, the positive space only, every prompt in full
    coop = DualPromptLearner(student, names, truncate=False, share_prefix=False)
    fdbpl = DualPromptLearner(student, names)
    fdbpl_full = DualPromptLearner(student, names, share_prefix=False)  # the shared start not reused
    loss_fn = FDBPLLoss()
    scale = student.logit_scale.exp()
    teacher_text = None
    if teacher is not None:
        with torch.no_grad():
            tokens = open_clip.get_tokenizer(args.teacher)([f"a photo of a {c}." for c in names])
            teacher_text = F.normalize(teacher.encode_text(tokens), dim=-1)
    sampler = CropSampler()
    hard_labels = torch.randint(0, len(names), (len(decoded),))

    def coop_step(learner: DualPromptLearner = coop) -> None:
        crops = []
        for i, img in enumerate(decoded):
            box, flip = sampler.sample(i, img.shape[1], img.shape[2], 1)
            crops.append(render_crop(img, box[0], bool(flip[0]), size_s, MEAN, STD))
        with torch.no_grad():
            f = F.normalize(student.encode_image(torch.stack(crops)), dim=-1)
        x, pool = learner.prompt_embeddings("positive")
        t = F.normalize(learner.tower.encode_embeddings(x, pool), dim=-1)
        loss = F.cross_entropy(scale * f @ t.T, hard_labels)
        loss.backward()
        learner.zero_grad()

    def replay() -> tuple[torch.Tensor, SparseSoftLabels, torch.Tensor]:
        crops = []
        for rid, img in zip(region_ids.tolist(), decoded):
            row = table.read(rid)
            crops.append(render_crop(img, row["box"], bool(row["flip"]), size_s, MEAN, STD))
        regions = table.regions(region_ids)
        return torch.stack(crops), regions.labels, regions.weights

    def fdbpl_step(online: bool = False) -> None:
        x, labels, w = replay()
        if online:  # the teacher's view of the same regions, then its probabilities
            regions = table.regions(region_ids)
            size_t = _side(teacher)
            teacher_in = torch.stack(
                [
                    render_crop(img, b, bool(fl), size_t, MEAN, STD)
                    for img, b, fl in zip(decoded, regions.boxes, regions.flips)
                ]
            )
            with torch.no_grad():
                labels = torch.softmax(
                    100 * F.normalize(teacher.encode_image(teacher_in), dim=-1) @ teacher_text.T, dim=1
                )
        with torch.no_grad():
            f = student.encode_image(x)
        pos, neg = fdbpl()
        loss_fn(f, pos, neg, labels, w, scale).total.backward()
        fdbpl.zero_grad()

    def cached_step(learner: DualPromptLearner = fdbpl) -> None:
        regions = table.regions(region_ids)  # labels, weights and the stored image features
        pos, neg = learner()
        loss_fn(regions.features.float(), pos, neg, regions.labels, regions.weights, scale).total.backward()
        learner.zero_grad()

    fns = {
        "coop": coop_step,
        "coop_cut": lambda: coop_step(fdbpl),
        "fdbpl": fdbpl_step,
        "cached": cached_step,
        "cached_full": lambda: cached_step(fdbpl_full),
    }
    if teacher is not None:
        fns["online"] = lambda: fdbpl_step(online=True)
    times = median_times(fns, args.repeats, torch.device("cpu"))
    print(f"batch {len(decoded)}:")
    for name, t in times.items():
        print(f"  {name:<9} {t:8.3f} s/step")
    target = 0.3 if batch <= 32 else 0.2
    print(f"  fdbpl/coop     {times['fdbpl'] / times['coop']:.2f}   (target <= 1.15)")
    print(
        f"  fdbpl/coop_cut {times['fdbpl'] / times['coop_cut']:.2f}   (CoOp with prompts cut as fdbpl cuts them)"
    )
    print(f"  cached/coop    {times['cached'] / times['coop']:.2f}   (target <= {target})")
    print(f"  fdbpl/cached   {times['fdbpl'] / times['cached']:.2f}   (target >= 1.4)")
    print(
        f"  cached_full/cached {times['cached_full'] / times['cached']:.2f} (computing the shared prompt start once)"
    )
    if "online" in times:
        print(f"  online/fdbpl   {times['online'] / times['fdbpl']:.2f}   (target >= 4.5)")
    steps = -(-1600 // len(decoded))
    print(
        f"  one epoch of a 16-shot, {args.classes}-class table ({steps} steps): coop {steps * times['coop']:.0f} s, "
        f"fdbpl {steps * times['fdbpl']:.0f} s, cached {steps * times['cached']:.0f} s"
    )


if __name__ == "__main__":
    main()
