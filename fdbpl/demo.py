"""``fdbpl demo``: the whole pipeline on a fresh machine with nothing downloaded.

It draws a small image-folder dataset (shapes and colours with real class names), gives a
tiny random-initialised open_clip teacher a short contrastive fit on it (so that it has
something to teach), builds the RIL table of its soft labels, trains the dual prompts of a
smaller random-initialised student from the table, and reports how often the student's
top-1 agrees with the teacher's on crops of held-out images, with the initial and the
learned prompts. Every piece can be swapped for real models and data by argument.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fdbpl.cache import RegionDataset, RILTable, build_table, clip_teacher, scan_image_folder
from fdbpl.cache.crops import CropSampler
from fdbpl.cache.images import ScanResult
from fdbpl.images import decode_image, render_crop
from fdbpl.models import LoadedCLIP, load_open_clip
from fdbpl.prompts import DualPromptLearner
from fdbpl.run import RunFolder, load_run
from fdbpl.synthetic import draw_image_folder
from fdbpl.train import TrainConfig, train

__all__ = ["TINY_STUDENT", "TINY_TEACHER", "DemoConfig", "run_demo"]

_TEXT = dict(context_length=77, vocab_size=49408, heads=4)
#: The demo's teacher: a tiny ViT CLIP (48 px, 2 layers of width 96).
TINY_TEACHER = {
    "embed_dim": 64,
    "vision_cfg": dict(image_size=48, patch_size=8, width=96, layers=2, head_width=32),
    "text_cfg": dict(_TEXT, width=96, layers=2),
}
#: The demo's student: smaller (32 px, 2 layers of width 64).
TINY_STUDENT = {
    "embed_dim": 64,
    "vision_cfg": dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
    "text_cfg": dict(_TEXT, width=64, layers=2),
}


@dataclass
class DemoConfig:
    out: Path = Path("fdbpl-demo")
    images: Path | None = None
    teacher: str | None = None
    teacher_pretrained: str | None = None
    student: str | None = None
    student_pretrained: str | None = None
    images_per_class: int = 12
    held_out_per_class: int = 4
    fit_teacher_steps: int = 300
    crops_per_image: int = 64
    held_out_crops: int = 16
    topk: int = 5
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.05
    class_specific: bool = True
    seed: int = 0


def _say(msg: str) -> None:
    print(msg, flush=True)


def _tiny(out: Path, name: str, cfg: dict[str, Any]) -> str:
    path = out / f"{name}.json"
    path.write_text(json.dumps(cfg, indent=1))
    return str(path)


def _split(scan: ScanResult, held_out: int, seed: int) -> tuple[ScanResult, ScanResult]:
    """The last ``held_out`` images of every class (after a seeded shuffle) are held out."""
    gen = torch.Generator().manual_seed(seed)
    train_images, test_images = [], []
    for label in range(len(scan.classnames)):
        recs = [r for r in scan.images if r.label == label]
        order = torch.randperm(len(recs), generator=gen).tolist()
        cut = len(recs) - min(held_out, len(recs) - 1)
        train_images += [recs[i] for i in sorted(order[:cut])]
        test_images += [recs[i] for i in sorted(order[cut:])]
    return replace(scan, images=train_images), replace(scan, images=test_images)


def _fit_teacher(loaded: LoadedCLIP, root: Path, scan: ScanResult, steps: int, seed: int) -> None:
    """A short CLIP-style fit of the teacher to captions "a photo of a {class}.", on random crops."""
    model = loaded.model
    torch.manual_seed(seed)
    text_ids = loaded.tokenizer([f"a photo of a {c}." for c in scan.classnames])
    images = [decode_image(root / r.path) for r in scan.images]
    labels = torch.tensor([r.label for r in scan.images])
    sampler = CropSampler(scale=(0.25, 1.0), seed=seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    model.train()
    for step in range(steps):
        pick = torch.randint(0, len(images), (64,))
        crops = []
        for j, i in enumerate(pick.tolist()):
            img = images[i]
            box, flip = sampler.sample(step * 64 + j, img.shape[1], img.shape[2], 1)
            crops.append(render_crop(img, box[0], bool(flip[0]), loaded.image_size, loaded.mean, loaded.std))
        f = F.normalize(model.encode_image(torch.stack(crops)), dim=-1)
        t = F.normalize(model.encode_text(text_ids), dim=-1)
        loss = F.cross_entropy(model.logit_scale.exp() * f @ t.T, labels[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@torch.no_grad()
def _agreement(
    student: torch.nn.Module, learner: torch.nn.Module, data: RegionDataset, table: RILTable
) -> float:
    text, _ = learner.normalized_features()
    agree = total = 0
    for i in range(len(data)):
        item = data[i]
        feats = F.normalize(student.encode_image(item["image"]).float(), dim=-1)
        pred = (feats @ text.float().T).argmax(dim=1)
        teacher_top1 = table.regions(item["region"]).labels.top1
        agree += int((pred == teacher_top1).sum())
        total += len(pred)
    return 100.0 * agree / total


def run_demo(cfg: DemoConfig | None = None) -> dict[str, float]:
    """Run the demo; returns the agreement before and after training, in percent."""
    cfg = cfg or DemoConfig()
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _say(f"fdbpl demo -> {out}")
    if cfg.teacher_pretrained is None or cfg.student_pretrained is None:
        _say(
            "note: the models here are RANDOM-INITIALISED tiny CLIPs (no weights can be downloaded); "
            "the numbers show the pipeline working, not FDBPL's accuracy.\n"
            "      For real runs: --teacher ViT-L-14 --teacher-pretrained openai --student ViT-B-32 "
            "--student-pretrained openai --images YOUR_IMAGE_FOLDER"
        )
    per_class = cfg.images_per_class + cfg.held_out_per_class
    root = (
        Path(cfg.images)
        if cfg.images
        else draw_image_folder(out / "images", per_class=per_class, seed=cfg.seed)
    )
    train_scan, test_scan = _split(scan_image_folder(root), cfg.held_out_per_class, cfg.seed)
    _say(
        f"[1/5] images: {len(train_scan.classnames)} classes, {len(train_scan.images)} training and "
        f"{len(test_scan.images)} held-out images in {root}"
    )
    teacher, student = _models(cfg, out, root, train_scan)
    table, held_out = _tables(cfg, out, root, teacher, train_scan, test_scan)
    s = student
    held_out_data = RegionDataset(
        held_out, root, image_size=s.image_size, mean=s.mean, std=s.std, crops_per_image=cfg.held_out_crops
    )
    initial = DualPromptLearner(s.model, table.classnames, tokenizer=s.tokenizer)
    before = _agreement(s.model, initial, held_out_data, held_out)
    run = _train_student(cfg, out, root, table, student)
    trained = DualPromptLearner.from_state_dict(s.model, load_run(run)["learner"], tokenizer=s.tokenizer)
    after = _agreement(s.model, trained, held_out_data, held_out)
    _say(f"[5/5] done in {time.perf_counter() - start:.0f} s; run in {run}")
    _say(f"agreement with teacher: before {before:.1f}% -> after {after:.1f}%")
    return {"before": before, "after": after}


def _models(cfg: DemoConfig, out: Path, root: Path, train_scan: ScanResult) -> tuple[LoadedCLIP, LoadedCLIP]:
    """The teacher (fitted briefly to the images when it is the tiny random one) and the student."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        teacher = load_open_clip(
            cfg.teacher or _tiny(out, "demo-teacher", TINY_TEACHER), cfg.teacher_pretrained, seed=cfg.seed
        )
        student = load_open_clip(
            cfg.student or _tiny(out, "demo-student", TINY_STUDENT), cfg.student_pretrained, seed=cfg.seed + 1
        )
    if cfg.teacher is None and cfg.fit_teacher_steps > 0:
        t0 = time.perf_counter()
        _fit_teacher(teacher, root, train_scan, cfg.fit_teacher_steps, cfg.seed)
        _say(
            f"[2/5] teacher {teacher.name}: random init, fitted to the training images for "
            f"{cfg.fit_teacher_steps} steps ({time.perf_counter() - t0:.0f} s)"
        )
    else:
        _say(f"[2/5] teacher {teacher.name} ({teacher.pretrained})")
    return teacher, student


def _tables(
    cfg: DemoConfig, out: Path, root: Path, teacher: LoadedCLIP, train_scan: ScanResult, test_scan: ScanResult
) -> tuple[RILTable, RILTable]:
    """The RIL tables of the training and the held-out images."""
    t0 = time.perf_counter()
    zero_shot = clip_teacher(
        teacher.model,
        train_scan.classnames,
        teacher.tokenizer,
        teacher.image_size,
        teacher.mean,
        teacher.std,
        description={"name": teacher.name, "pretrained": teacher.pretrained},
    )
    common = dict(
        topk=min(cfg.topk, len(train_scan.classnames)), seed=cfg.seed, progress=False, overwrite=True
    )
    build_table(
        root, out / "table", zero_shot, scan=train_scan, crops_per_image=cfg.crops_per_image, **common
    )
    build_table(
        root, out / "held-out-table", zero_shot, scan=test_scan, crops_per_image=cfg.held_out_crops, **common
    )
    table, held_out = RILTable.open(out / "table"), RILTable.open(out / "held-out-table")
    top1 = held_out.regions(range(len(held_out))).labels.top1
    truth = torch.tensor(held_out.image_labels).repeat_interleave(held_out.crops_per_image)
    _say(
        f"[3/5] RIL tables: {len(table)} training and {len(held_out)} held-out regions, Top-{table.topk} "
        f"({time.perf_counter() - t0:.0f} s); the teacher names the true class of "
        f"{100.0 * float((top1 == truth).float().mean()):.0f}% of held-out crops"
    )
    return table, held_out


def _train_student(cfg: DemoConfig, out: Path, root: Path, table: RILTable, student: LoadedCLIP) -> Path:
    """Train the student's dual prompts from the table, afresh; returns the run folder."""
    config = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        crops_per_image=4,
        class_specific=cfg.class_specific,
        seed=cfg.seed,
    )
    run = out / "run"
    RunFolder(run).start_afresh()  # the demo always trains afresh
    result = train(
        table,
        root,
        student.model,
        run,
        config=config,
        student_description=student.describe(),
        **student.recipe(),
        progress=False,
    )
    _say(
        f"[4/5] trained the dual prompts of student {student.name} for {cfg.epochs} epochs, {result.steps} "
        f"steps ({result.seconds:.0f} s); last loss {result.last['total']:.3f}"
    )
    return run
