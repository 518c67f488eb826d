"""The GPU check: fdbpl's losses, prompt learner and training step on CUDA, in one run.

    python benchmarks/gpu_check.py [--device cuda] [--quick]

Without CUDA it says so and exits 0 (``--device cpu`` runs the same checks on the CPU,
which is how the tests exercise this script). On the device it runs, and prints:

1. every loss (Eq. 9, 10, 13, 16 over items and over classes, 17, ``clip_logits``,
   the information weight; Eq. 16 and 17 also with per-image text features) in float32, bfloat16 and float16 autocast, against float64
   CPU references: the largest relative error of values and gradients;
2. the prompt learner (both spaces, chunked and not), and the CoCoOp, IVLP and MaPLe
   learners, against the same learners on the CPU, and their gradients;
3. a training step from a table with stored student features, and one encoding images;
4. ``torch.compile`` (inductor) of the total loss against eager, and their times;
5. time and peak memory of the fused vs naive second-order loss (N x C grid, D = 512), its
   four matrix products alone against the floor, and what its float64 products cost (vs the
   same loss with float32 products).

Exit status 1 if a check fails (its line says FAIL), 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _measure import median_times, mib, peak_bytes
from bench_pcd_second_order import make_inputs, variants

from fdbpl.losses import functional as L
from fdbpl.sparsify import topk_ms

#: Largest relative error accepted against float64, per compute precision.
TOLERANCE = {"float32": 1e-4, "bfloat16": 6e-2, "float16-autocast": 2e-2}


class Report:
    """Prints one line per check and remembers failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, name: str, error: float, tolerance: float, extra: str = "") -> None:
        ok = error <= tolerance
        if not ok:
            self.failed.append(name)
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<48} rel. error {error:9.2e} (<= {tolerance:.0e}) {extra}")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def loss_inputs(n: int, c: int, d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    neg = torch.randn(c, d, generator=gen, dtype=torch.float64)
    pos = (
        neg
        + torch.randn(1, d, generator=gen, dtype=torch.float64)
        + 0.5 * torch.randn(c, d, generator=gen, dtype=torch.float64)
    )
    teacher = torch.softmax(3 * torch.randn(n, c, generator=gen, dtype=torch.float64), dim=1)
    return {
        "f": torch.randn(n, d, generator=gen, dtype=torch.float64),
        "pos": pos,
        "neg": neg,
        "teacher": teacher,
        "labels": teacher.argmax(1),
        "w": torch.rand(n, generator=gen, dtype=torch.float64),
    }


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "clip_logits": lambda f, pos, neg, teacher, labels, w: L.clip_logits(f, pos).square().mean(),
    "information_weight (Eq. 6)": lambda f, pos, neg, teacher, labels, w: L.information_weight(
        torch.softmax(L.clip_logits(f, pos), 1)
    ).sum(),
    "positive distillation (Eq. 9)": lambda f, pos, neg, teacher, labels, w: L.positive_distillation_loss(
        L.clip_logits(f, pos), teacher, w
    ),
    "positive distillation, sparse MS labels": lambda f, pos, neg, teacher, labels, w: (
        L.positive_distillation_loss(L.clip_logits(f, pos), topk_ms(teacher, 5), w)
    ),
    "negative uniform (Eq. 10)": lambda f, pos, neg, teacher, labels, w: L.negative_uniform_loss(
        L.clip_logits(f, neg), w
    ),
    "first order (Eq. 13)": lambda f, pos, neg, teacher, labels, w: L.first_order_difference_loss(
        f, pos, neg, labels, w
    ),
    "second order (Eq. 16)": lambda f, pos, neg, teacher, labels, w: L.second_order_difference_loss(
        f, pos, neg, labels, w
    ),
    "total (Eq. 17)": lambda f, pos, neg, teacher, labels, w: L.fdbpl_loss(f, pos, neg, teacher, w).total,
    # text features per image (N, C, D), as a CoCoOp learner gives them
    "second order per image (Eq. 16)": lambda f, pos, neg, teacher, labels, w: L.second_order_difference_loss(
        f, per_image(pos, len(f)), per_image(neg, len(f)), labels, w
    ),
    "total per image (Eq. 17)": lambda f, pos, neg, teacher, labels, w: (
        L.fdbpl_loss(f, per_image(pos, len(f)), per_image(neg, len(f)), teacher, w).total
    ),
}


def per_image(text: torch.Tensor, n: int) -> torch.Tensor:
    """(C, D) -> (N, C, D), another scale per image (not an expand view)."""
    scale = 1 + 0.1 * torch.arange(n, device=text.device, dtype=text.dtype) / n
    return text[None] * scale[:, None, None]


def value_and_grads(
    fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], device, dtype, autocast
):
    x = {k: v.to(device) for k, v in inputs.items()}
    for k in ("f", "pos", "neg", "teacher", "w"):
        x[k] = x[k].to(dtype if not autocast else torch.float32)
    for k in ("f", "pos", "neg"):
        x[k].requires_grad_()
    ctx = torch.autocast(device.type, dtype=torch.float16) if autocast else contextlib.nullcontext()
    with ctx:
        value = fn(**x)
    value.float().backward()
    return value, [x[k].grad for k in ("f", "pos", "neg")]


def check_losses(device: torch.device, report: Report, quick: bool) -> None:
    print("1. losses against float64 CPU references (values and gradients of f, g(V), g(V̄))")
    shapes = [(32, 10, 64)] if quick else [(32, 100, 512), (512, 100, 512), (128, 1000, 512)]
    precisions = [("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False)]
    if device.type == "cuda":
        precisions.append(("float16-autocast", torch.float32, True))
    for n, c, d in shapes:
        inputs = loss_inputs(n, c, d)
        for name, fn in LOSSES.items():
            ref_value, ref_grads = value_and_grads(fn, inputs, torch.device("cpu"), torch.float64, False)
            for label, dtype, autocast in precisions:
                value, grads = value_and_grads(fn, inputs, device, dtype, autocast)
                error = max(
                    [relative_error(value, ref_value)]
                    + [
                        relative_error(g, r)
                        for g, r in zip(grads, ref_grads)
                        if r is not None and g is not None
                    ]
                )
                report.check(f"{name} N={n} C={c} {label}", error, TOLERANCE[label])


def tiny_clip(image_size: int = 32):
    import open_clip

    from fdbpl.demo import TINY_STUDENT

    torch.manual_seed(0)
    cfg = dict(TINY_STUDENT)
    cfg["vision_cfg"] = dict(cfg["vision_cfg"], image_size=image_size)
    return open_clip.CLIP(**cfg).eval()


def check_learner(device: torch.device, report: Report) -> None:
    from fdbpl.prompts import DualPromptLearner

    print("2. the prompt learner on the device against the CPU")
    names = [f"class number {i}" for i in range(50)]
    cpu_model, dev_model = tiny_clip(), tiny_clip().to(device)
    results = {}
    for where, model in (("cpu", cpu_model), ("device", dev_model)):
        for chunk in (None, 7):
            learner = DualPromptLearner(model, names, class_chunk_size=chunk).to(
                next(model.parameters()).device
            )
            pos, neg = learner()
            (pos.square().sum() + neg.sum()).backward()
            results[where, chunk] = (pos, neg, learner.positive_context.grad, learner.negative_context.grad)
    for chunk in (None, 7):
        error = max(relative_error(a, b) for a, b in zip(results["device", chunk], results["cpu", None]))
        report.check(f"learner features and gradients, class_chunk_size={chunk}", error, 1e-4)
    check_other_learners(names[:12], cpu_model, dev_model, device, report)


def check_other_learners(names, cpu_model, dev_model, device: torch.device, report: Report) -> None:
    """CoCoOp's and the deep methods' learners on the device against the CPU: features and gradients."""
    from fdbpl.prompts import build_learner

    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for method, options in (("cocoop", {}), ("ivlp", {"depth": 2}), ("maple", {"depth": 2})):
        results = {}
        for where, model in (("cpu", cpu_model), ("device", dev_model)):
            torch.manual_seed(3)  # the same random prompts on both
            prompts = build_learner(method, model, names, **options).to(next(model.parameters()).device)
            f, pos, neg = prompts(images.to(next(model.parameters()).device))
            (f.sum() + pos.square().sum() + neg.sum()).backward()
            results[where] = [f, pos, neg, *(p.grad for p in prompts.parameters() if p.grad is not None)]
        error = max(relative_error(a, b) for a, b in zip(results["device"], results["cpu"]))
        report.check(f"{method} learner features and gradients", error, 1e-4)


def check_training(device: torch.device, report: Report) -> None:
    from tiny_models import toy_teacher

    from fdbpl.cache import RILTable, build_table, clip_student_features, scan_image_folder
    from fdbpl.images import InputRecipe
    from fdbpl.synthetic import draw_image_folder
    from fdbpl.train import TrainConfig, train

    print("3. training steps on the device (stored features, and encoded images)")
    tmp = Path(tempfile.mkdtemp(prefix="fdbpl-gpu-check-"))
    images = draw_image_folder(tmp / "img", per_class=4, size=(64, 48))
    scan = scan_image_folder(images)
    student = tiny_clip().to(device)
    recipe = InputRecipe(32)
    build_table(
        images,
        tmp / "table",
        toy_teacher(len(scan.classnames)),
        student=clip_student_features(student, recipe, {"name": "tiny"}),
        scan=scan,
        crops_per_image=4,
        topk=3,
        progress=False,
    )
    table = RILTable.open(tmp / "table")
    for how in ("cached", "encode"):
        cfg = TrainConfig(epochs=2, batch_size=8, image_features=how, class_chunk_size=3)
        start = time.perf_counter()
        result = train(
            table, images, student, tmp / how, config=cfg, recipe=recipe, device=device, progress=False
        )
        finite = all(torch.isfinite(torch.tensor(v)) for v in result.last.values())
        report.check(
            f"train --image-features {how}: finite losses",
            0.0 if finite else float("inf"),
            0.0,
            f"{result.steps} steps in {time.perf_counter() - start:.2f} s",
        )


def check_compile(device: torch.device, report: Report, quick: bool) -> None:
    print("4. torch.compile (inductor) of the total loss against eager")
    n, c, d = (32, 10, 64) if quick else (128, 1000, 512)
    x = {
        k: v.to(device=device, dtype=torch.float32 if v.is_floating_point() else v.dtype)
        for k, v in loss_inputs(n, c, d).items()
    }
    x["pos"].requires_grad_()

    def step(fn):
        def run():
            value = fn(x["f"], x["pos"], x["neg"], x["teacher"], x["w"]).total
            value.backward()
            x["pos"].grad = None
            return value

        return run

    try:
        compiled = torch.compile(L.fdbpl_loss)
        got, want = step(compiled)(), step(L.fdbpl_loss)()
    except Exception as e:  # report it as a failure, keep going
        report.check(f"torch.compile: {type(e).__name__}: {str(e).splitlines()[0][:80]}", float("inf"), 0.0)
        return
    times = median_times(
        {"eager": step(L.fdbpl_loss), "compiled": step(compiled)}, 3 if quick else 10, device
    )
    report.check(
        f"compiled fdbpl_loss N={n} C={c}",
        relative_error(got, want),
        1e-4,
        f"eager/compiled time {times['eager'] / times['compiled']:.2f}x",
    )


def second_order_table(device: torch.device, quick: bool) -> None:
    print(
        "5. second-order loss, forward+backward, D = 512: fused vs naive (N, N, D), the floor f @ D1ᵀ, "
        "the fused loss's four matrix products alone, and the fused loss with float32 products "
        "(near-tie cost: what its float64 products cost)"
    )
    sizes = [(32, 100)] if quick else [(n, c) for c in (100, 1000) for n in (32, 128, 512)]
    print(
        f"  {'N':>5} {'C':>5} {'naive/fused time':>17} {'fused/floor time':>17} {'its products/floor':>19} {'near-tie cost':>14} "
        f"{'fused mem':>13} {'naive mem':>13}"
    )
    for n, c in sizes:
        fns = variants(*make_inputs(n, c, 512, device))
        times = median_times(fns, 3 if quick else 10, device)
        memory = (
            {k: max(peak_bytes(fns[k], device), 1) for k in ("fused", "naive")}
            if device.type == "cuda"
            else None
        )
        mem = f"{mib(memory['fused'])} {mib(memory['naive'])}" if memory else "(peak memory: CUDA only here)"
        print(
            f"  {n:>5} {c:>5} {times['naive'] / times['fused']:>16.1f}x {times['fused'] / times['floor']:>16.2f}x "
            f"{times['its products'] / times['floor']:>18.2f}x {times['fused'] / times['float32 products']:>13.2f}x {mem}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to check (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (for the tests)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (run it on a machine with a GPU)")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, device {device} ({name})")
    from fdbpl import set_value_checks

    report = Report()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check_losses(device, report, args.quick)
        check_learner(device, report)
        check_training(device, report)
        set_value_checks(False)  # time the maths, not the input checks' host syncs
        check_compile(device, report, args.quick)
        second_order_table(device, args.quick)
        set_value_checks(True)
    print(
        f"{len(report.failed)} check(s) failed" + (f": {', '.join(report.failed)}" if report.failed else "")
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
