"""``fdbpl demo``: the whole pipeline on a fresh machine with nothing downloaded.

It draws a small image-folder dataset (shapes and colours with real class names), splits
it into ``OUT/train`` and ``OUT/held-out`` folders, gives a tiny random-initialised
open_clip teacher a short contrastive fit on it (so that it has something to teach),
builds the RIL table of its soft labels, trains the dual prompts of a smaller
random-initialised student from the table, and reports how often the student's top-1
agrees with the teacher's on crops of held-out images, with the initial and the learned
prompts, next to chance (1 / C). It saves both models (config JSON and checkpoint) and
prints the ``fdbpl`` commands that do the same steps from them, offline. Every piece can
be swapped for real models and data by argument.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fdbpl.cache import RegionDataset, RILTable, build_table, clip_teacher, scan_image_folder
from fdbpl.cache.crops import CropSampler
from fdbpl.cache.scan import ScanResult
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
    progress: bool = True


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


def _bar(total: int, desc: str, show: bool, unit: str = "step") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False, dynamic_ncols=True)


def _fit_teacher(
    loaded: LoadedCLIP, root: Path, scan: ScanResult, steps: int, seed: int, progress: bool
) -> None:
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
    bar = _bar(steps, "fitting the teacher", progress)
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
        bar.update(1)
    bar.close()
    model.eval()


@torch.no_grad()
def _agreement(
    student: torch.nn.Module,
    learner: torch.nn.Module,
    data: RegionDataset,
    table: RILTable,
    desc: str,
    progress: bool,
) -> float:
    text, _ = learner.normalized_features()
    agree = total = 0
    bar = _bar(len(data), desc, progress, unit="image")
    for i in range(len(data)):
        item = data[i]
        feats = F.normalize(student.encode_image(item["image"]).float(), dim=-1)
        pred = (feats @ text.float().T).argmax(dim=1)
        teacher_top1 = table.regions(item["region"]).labels.top1
        agree += int((pred == teacher_top1).sum())
        total += len(pred)
        bar.update(1)
    bar.close()
    return 100.0 * agree / total


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo; returns the agreement before and after training and chance, in
    percent, and the commands that continue from what it saved."""
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
    train_root, test_root = (
        _materialise(root, train_scan, out / "train"),
        _materialise(root, test_scan, out / "held-out"),
    )
    _say(
        f"[1/5] images: {len(train_scan.classnames)} classes, {len(train_scan.images)} training images in "
        f"{train_root}, {len(test_scan.images)} held-out images in {test_root}"
    )
    teacher, student = _models(cfg, out, train_root, train_scan)
    table, held_out = _tables(cfg, out, (train_root, test_root), teacher, train_scan, test_scan)
    s = student
    held_out_data = RegionDataset(
        held_out, test_root, recipe=s.input_recipe, crops_per_image=cfg.held_out_crops
    )
    initial = DualPromptLearner(s.model, table.classnames, tokenizer=s.tokenizer)
    before = _agreement(s.model, initial, held_out_data, held_out, "agreement, initial prompts", cfg.progress)
    run = _train_student(cfg, out, train_root, table, student)
    trained = DualPromptLearner.from_state_dict(s.model, load_run(run)["learner"], tokenizer=s.tokenizer)
    after = _agreement(s.model, trained, held_out_data, held_out, "agreement, learned prompts", cfg.progress)
    chance = 100.0 / table.num_classes
    _say(f"[5/5] done in {time.perf_counter() - start:.0f} s; run in {run}")
    commands = _continue_commands(cfg, out, train_root, test_root, table.num_classes)
    _say("the same steps from the saved models, offline (fdbpl build-cache, inspect, train, evaluate):")
    for command in commands:
        _say("  " + command)
    _say(f"agreement with teacher: before {before:.1f}% -> after {after:.1f}% (chance {chance:.1f}%)")
    return {"before": before, "after": after, "chance": chance, "commands": commands}


def _materialise(root: Path, scan: ScanResult, folder: Path) -> Path:
    """Copy the scanned images into ``folder`` (same class sub-folders): an image folder of its own."""
    if folder.exists():
        shutil.rmtree(folder)
    for rec in scan.images:
        target = folder / rec.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rec.path, target)
    return folder


def _models(cfg: DemoConfig, out: Path, root: Path, train_scan: ScanResult) -> tuple[LoadedCLIP, LoadedCLIP]:
    """The teacher (fitted briefly to the images when it is the tiny random one) and the
    student; tiny ones are saved as config JSON + checkpoint for the printed commands."""
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
        _fit_teacher(teacher, root, train_scan, cfg.fit_teacher_steps, cfg.seed, cfg.progress)
        _say(
            f"[2/5] teacher {teacher.name}: random init, fitted to the training images for "
            f"{cfg.fit_teacher_steps} steps ({time.perf_counter() - t0:.0f} s)"
        )
    else:
        _say(f"[2/5] teacher {teacher.name} ({teacher.pretrained})")
    _save_weights("teacher", teacher, cfg.teacher_pretrained, out)
    _save_weights("student", student, cfg.student_pretrained, out)
    return teacher, student


def _tables(
    cfg: DemoConfig,
    out: Path,
    roots: tuple[Path, Path],
    teacher: LoadedCLIP,
    train_scan: ScanResult,
    test_scan: ScanResult,
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
        topk=min(cfg.topk, len(train_scan.classnames)), seed=cfg.seed, progress=cfg.progress, overwrite=True
    )
    train_root, test_root = roots
    train_scan = scan_image_folder(train_root, train_scan.classnames)
    test_scan = scan_image_folder(test_root, test_scan.classnames)
    build_table(
        train_root, out / "table", zero_shot, scan=train_scan, crops_per_image=cfg.crops_per_image, **common
    )
    build_table(
        test_root,
        out / "held-out-table",
        zero_shot,
        scan=test_scan,
        crops_per_image=cfg.held_out_crops,
        **common,
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


def _train_config(cfg: DemoConfig) -> TrainConfig:
    return TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        crops_per_image=4,
        class_specific=cfg.class_specific,
        seed=cfg.seed,
    )


def _train_student(cfg: DemoConfig, out: Path, root: Path, table: RILTable, student: LoadedCLIP) -> Path:
    """Train the student's dual prompts from the table, afresh; returns the run folder."""
    run = out / "run"
    RunFolder(run).start_afresh()  # the demo always trains afresh
    result = train(
        table,
        root,
        student.model,
        run,
        config=_train_config(cfg),
        student_description=student.describe(),
        **student.recipe(),
        progress=cfg.progress,
    )
    _say(
        f"[4/5] trained the dual prompts of student {student.name} for {cfg.epochs} epochs, {result.steps} "
        f"steps ({result.seconds:.0f} s); last loss {result.last['total']:.3f}"
    )
    return run


def _model_args(role: str, given: str | None, pretrained: str | None, out: Path) -> list[str]:
    """``--teacher/--student MODEL --pretrained WEIGHTS`` that load the model the demo used."""
    model = given if given is not None else str(out / f"demo-{role}.json")
    weights = pretrained if pretrained is not None else str(out / f"demo-{role}.pt")
    return [f"--{role}", model, "--pretrained", weights]


def _save_weights(role: str, loaded: LoadedCLIP, pretrained: str | None, out: Path) -> None:
    """Random (or fitted) weights have no tag to name them: save them for the printed commands."""
    if pretrained is None:
        torch.save(loaded.model.state_dict(), out / f"demo-{role}.pt")


def _continue_commands(
    cfg: DemoConfig, out: Path, train_root: Path, test_root: Path, num_classes: int
) -> list[str]:
    """The fdbpl commands that redo the demo's table, run and evaluation from what it saved."""
    t = _train_config(cfg)
    table, run = out / "cli-table", out / "cli-run"
    topk = min(cfg.topk, num_classes)
    build = ["fdbpl", "build-cache", str(train_root), str(table)]
    build += _model_args("teacher", cfg.teacher, cfg.teacher_pretrained, out)
    build += ["--crops-per-image", str(cfg.crops_per_image), "--topk", str(topk), "--seed", str(cfg.seed)]
    inspect = [
        "fdbpl",
        "inspect",
        str(table),
        "--plot",
        str(out / "cli-table.png"),
        "--images",
        str(train_root),
    ]
    fit = ["fdbpl", "train", str(table), str(train_root)]
    fit += _model_args("student", cfg.student, cfg.student_pretrained, out)
    fit += [
        "--out",
        str(run),
        "--epochs",
        str(t.epochs),
        "--batch-size",
        str(t.batch_size),
        "--lr",
        str(t.lr),
    ]
    fit += ["--crops-per-image", str(t.crops_per_image), "--seed", str(t.seed)]
    fit += ["--class-specific"] if t.class_specific else []
    evaluate = ["fdbpl", "evaluate", str(run), str(test_root), "--classes", "all"]
    return [shlex.join(c) for c in (build, inspect, fit, evaluate)]
