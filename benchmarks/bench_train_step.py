"""One training step (batch 32, C = 100): CoOp vs FDBPL from the table vs an online teacher.

    python benchmarks/bench_train_step.py [--repeats 2] [--student ViT-B-32] [--teacher ViT-L-14]

Random-initialised open_clip models (the timings do not depend on the weights). Each step
starts from decoded images and includes everything the method does per step:
- coop: random-resized crops, student image features, the positive prompts at CoOp's
  77 tokens, cross-entropy on hard labels, backward (coop_cut: the same with the prompts
  cut to their real length, to isolate what FDBPL itself adds);
- fdbpl: a batch of regions replayed from the RIL table with their stored labels, student
  image features, both prompt spaces in one cut pass, FDBPLLoss (Eq. 17), backward;
- online: fdbpl's step plus the teacher's image forward on the same crops (its text
  features cached), the way distillation-based prompt learning runs without a table.
Printed: fdbpl/coop (target <= 1.15) and online/fdbpl (target >= 4.5), side by side.
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
from fdbpl.cache import RILTable, Teacher, build_table, render_crop, scan_image_folder
from fdbpl.cache.crops import CropSampler
from fdbpl.cache.images import decode_image
from fdbpl.losses import FDBPLLoss
from fdbpl.prompts import DualPromptLearner
from fdbpl.sparsify import SparseSoftLabels
from fdbpl.synthetic import draw_image_folder

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="ViT-B-32")
    parser.add_argument("--teacher", default="ViT-L-14")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
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
    size_s = (
        student.visual.image_size[0]
        if isinstance(student.visual.image_size, tuple)
        else student.visual.image_size
    )
    size_t = (
        teacher.visual.image_size[0]
        if isinstance(teacher.visual.image_size, tuple)
        else teacher.visual.image_size
    )
    tmp = Path(tempfile.mkdtemp(prefix="fdbpl-bench-"))
    images = draw_image_folder(tmp / "img", per_class=args.batch // 8, size=(320, 256))
    scan = scan_image_folder(images)
    scan.classnames = names
    rand = Teacher(
        lambda x: torch.softmax(4 * torch.randn(x.shape[0], len(names)), 1), 8, (0.5,) * 3, (0.5,) * 3
    )
    build_table(images, tmp / "table", rand, scan=scan, crops_per_image=50, topk=20, progress=False)
    table = RILTable.open(tmp / "table")
    decoded = [decode_image(images / p) for p in table.image_paths]
    region_ids = torch.arange(len(decoded)) * table.crops_per_image
    tokenizer = open_clip.get_tokenizer(args.student)

    coop = DualPromptLearner(student, names, truncate=False)  # CoOp: 77 tokens, the positive space only
    fdbpl = DualPromptLearner(student, names)
    loss_fn = FDBPLLoss()
    scale = student.logit_scale.exp()
    with torch.no_grad():
        teacher_text = F.normalize(
            teacher.encode_text(open_clip.get_tokenizer(args.teacher)([f"a photo of a {c}." for c in names])),
            dim=-1,
        )
    sampler = CropSampler()
    hard_labels = torch.randint(0, len(names), (len(decoded),))
    del tokenizer

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

    def replay() -> tuple[torch.Tensor, SparseSoftLabels, torch.Tensor, list[torch.Tensor]]:
        crops, rows = [], []
        for rid, img in zip(region_ids.tolist(), decoded):
            row = table.read(rid)
            rows.append(row)
            crops.append(render_crop(img, row["box"], bool(row["flip"]), size_s, MEAN, STD))
        regions = table.regions(region_ids)
        return torch.stack(crops), regions.labels, regions.weights, crops

    def fdbpl_step(online: bool = False) -> None:
        x, labels, w, _ = replay()
        teacher_in = None
        if online:  # the teacher's view of the same regions, then its probabilities
            regions = table.regions(region_ids)
            boxes, flips = regions.boxes, regions.flips
            teacher_in = torch.stack(
                [
                    render_crop(img, b, bool(fl), size_t, MEAN, STD)
                    for img, b, fl in zip(decoded, boxes, flips)
                ]
            )
            with torch.no_grad():
                probs = torch.softmax(
                    100 * F.normalize(teacher.encode_image(teacher_in), dim=-1) @ teacher_text.T, dim=1
                )
        with torch.no_grad():
            f = student.encode_image(x)
        pos, neg = fdbpl()
        out = loss_fn(f, pos, neg, probs if online else labels, w, scale)
        out.total.backward()
        fdbpl.zero_grad()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; student {args.student}, teacher {args.teacher}, "
        f"batch {len(decoded)}, C = {len(names)} (random init)"
    )
    times = median_times(
        {
            "coop": coop_step,
            "coop_cut": lambda: coop_step(fdbpl),
            "fdbpl": fdbpl_step,
            "online": lambda: fdbpl_step(online=True),
        },
        args.repeats,
        torch.device("cpu"),
    )
    for name, t in times.items():
        print(f"  {name:<7} {t:8.2f} s/step")
    print(f"  fdbpl/coop   {times['fdbpl'] / times['coop']:.2f}   (target <= 1.15)")
    print(
        f"  fdbpl/coop_cut {times['fdbpl'] / times['coop_cut']:.2f} (CoOp with prompts cut as fdbpl cuts them)"
    )
    print(f"  online/fdbpl {times['online'] / times['fdbpl']:.2f}   (target >= 4.5)")


if __name__ == "__main__":
    main()
