"""The ``fdbpl`` command: ``build-cache``, ``inspect``, ``train``, ``evaluate`` and ``demo``.

Errors about the user's input print one line (``fdbpl COMMAND: error: ...``) and exit
with status 2; the parser's defaults come from :class:`fdbpl.train.TrainConfig` and
:class:`fdbpl.demo.DemoConfig`, so the help text and the Python API cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

import fdbpl
from fdbpl.cache import RILTable, build_table, clip_student_features, clip_teacher, scan_image_folder
from fdbpl.cache.build import BUILD_DEFAULTS, BuildSettings
from fdbpl.cache.crops import check_range
from fdbpl.cache.scan import check_distinct_classnames
from fdbpl.cache.summary import table_report
from fdbpl.cache.teacher import TEACHER_TEMPLATE, check_template
from fdbpl.demo import DemoConfig, run_demo
from fdbpl.distributed import process_group, rank_and_world
from fdbpl.errors import FDBPLError, InputValueError
from fdbpl.evaluate import evaluate_prompts, harmonic_mean
from fdbpl.files import read_file_text
from fdbpl.losses import LossWeights
from fdbpl.methods import method_names, method_spec
from fdbpl.methods.arguments import add_method_arguments, method_options_from
from fdbpl.models import LoadedCLIP, load_open_clip
from fdbpl.options import add_settings, flag_reason, integer_type, number_type, settings_from
from fdbpl.run import CHECKPOINT, CONFIG, LOG, RunFolder
from fdbpl.subsets import select_images
from fdbpl.train import TrainConfig, train

__all__ = ["build_parser", "main"]


#: ``fdbpl evaluate --classes``; the last is the default.
CLASS_CHOICES = ("base", "new", "all", "base-new")


#: :func:`~fdbpl.cache.build_table`'s defaults, which ``fdbpl build-cache`` shows and uses.


class _Parser(argparse.ArgumentParser):
    """Errors in one line, ``fdbpl CMD: error: ARG: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        message = message[len("argument ") :] if message.startswith("argument ") else message
        self.exit(2, f"{self.prog}: error: {message}\n")


class _CommandListFormatter(argparse.HelpFormatter):
    """``fdbpl --help``: one line per command (argparse measures the command names one
    indent short of where it prints them, and so wraps the longest one)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=100)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(len(a.dest) for a in action._get_subactions())
            needed = longest + self._current_indent + 2 * self._indent_increment
            self._action_max_length = max(self._action_max_length, needed)


def _template(text: str) -> str:
    if text == "dataset":  # resolved with --dataset
        return text
    try:
        return check_template(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(flag_reason(e)) from None


def _check_range(
    parser: argparse.ArgumentParser, flag: str, pair: Sequence[float], upper: float | None
) -> None:
    try:
        check_range(flag, pair, upper)
    except ValueError as e:
        parser.error(f"{flag}: {flag_reason(e)}")


def _check_out_folder(parser: argparse.ArgumentParser, name: str, path: str) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        parser.error(f"{name}: {path} exists and is not a folder")


def _check_device(parser: argparse.ArgumentParser, arg: str) -> None:
    """Refuse a device this machine does not have, before any model is loaded."""
    if arg == "auto":
        return
    try:
        device = torch.device(arg)
    except (RuntimeError, ValueError):
        parser.error(f"--device: {arg!r} is not a device (auto, cpu, cuda, cuda:N, mps)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            parser.error(f"--device: {arg} does not exist here ({count} CUDA device(s))")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        parser.error(f"--device: {arg} is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        parser.error(f"--device: {arg!r} is not supported (auto, cpu, cuda, cuda:N, mps)")


def _add_build_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-cache",
        help="compute the teacher's soft labels of random crops once: the RIL table",
        description=(
            "Build a RIL table: for every image of IMAGES (one sub-folder per class), draw random crops, "
            "run the teacher CLIP on them once, and store the Top-K soft labels and the information "
            "weight of each crop in OUT. Run it under torchrun to spread the work over processes or GPUs; "
            "run it again after an interruption to resume."
        ),
    )
    p.add_argument("images", help="image folder IMAGES/CLASS/IMAGE, or with --dataset CoOp's DATASET.ROOT")
    p.add_argument("out", help="the table's folder")
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help="read the training split of this dataset of CoOp's layout under IMAGES (e.g. OxfordPets; see "
        "fdbpl dataset): CoOp's class names ('_' read as a space), Dassl's --shots draw for --seed, and "
        "CoOp's --subset halves (default: IMAGES is an image folder)",
    )
    p.add_argument("--teacher", required=True, help="open_clip model name or path of a model-config JSON")
    p.add_argument(
        "--pretrained",
        help="open_clip pretrained tag (e.g. openai), local checkpoint path, or 'none' for random weights "
        "seeded by --seed; required for a named model (a config JSON without it is random)",
    )
    _add_crop_arguments(p)
    _add_class_arguments(p)
    _add_teacher_arguments(p)
    p.add_argument(
        "--shots", type=integer_type(1), help="N images per class, drawn with --seed (default: all)"
    )
    p.add_argument(
        "--subset",
        choices=["base", "new", "all"],
        default="all",
        help="classes kept: CoOp's base half (first half of the sorted classes), new half, or all "
        "(default: all)",
    )
    p.add_argument(
        "--student",
        help="also store this student's image feature of every crop (open_clip name or config JSON), so "
        "that training skips the frozen image encoder; not for methods that learn vision prompts "
        "(default: labels only)",
    )
    p.add_argument(
        "--student-pretrained",
        help="the student's weights: open_clip tag, checkpoint path, or 'none' for random weights seeded "
        "by --seed; required for a named --student (default: random weights for a config JSON)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a table in OUT built with other settings"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_build_cache, parser=p)


def _add_crop_arguments(p: argparse.ArgumentParser) -> None:
    """How many crops, which labels kept, in what batches (defaults: :func:`build_table`'s)."""
    add_settings(p, BuildSettings, ["crops_per_image", "topk", "strategy", "seed", "batch_size"])


def _add_class_arguments(p: argparse.ArgumentParser) -> None:
    """Which classes, and their names."""
    p.add_argument(
        "--classnames",
        help="file with one class name per line, in sorted folder order (default: the folder names, "
        "or the names --dataset reads)",
    )
    p.add_argument(
        "--fewshot-repeat",
        action="store_true",
        help="with --dataset: draw a class with fewer than --shots images with replacement, as Dassl did "
        "before 2022 (default: keep it whole)",
    )
    p.add_argument(
        "--keep-underscores",
        action="store_true",
        help="keep '_' in class names (default: read as a space, as CoOp reads them)",
    )
    p.add_argument(
        "--vocabulary",
        metavar="FILE",
        help="class-agnostic table: the teacher's classes are these names (one per line, any number), not "
        "the image folders'; train it with --max-classes (default: the folders' classes)",
    )


def _add_teacher_arguments(p: argparse.ArgumentParser) -> None:
    """The teacher's prompt and temperature, the crops' shapes, shards, workers, device."""
    p.add_argument(
        "--template",
        type=_template,
        default=TEACHER_TEMPLATE,
        help="teacher prompt with one {} for the class name, or 'dataset' for the --dataset's template of "
        f"CoOp's zero-shot CLIP (default: {TEACHER_TEMPLATE!r}, the paper's)",
    )
    p.add_argument(
        "--temperature",
        type=number_type(positive=True),
        help="softmax temperature tau > 0 (default: the teacher's own, 1 / logit_scale.exp())",
    )
    p.add_argument(
        "--scale",
        type=number_type(positive=True),
        nargs=2,
        default=BUILD_DEFAULTS.scale,
        metavar=("MIN", "MAX"),
        help="crop area as a fraction of the image's, 0 < MIN <= MAX <= 1 (default: 0.08 1)",
    )
    p.add_argument(
        "--ratio",
        type=number_type(positive=True),
        nargs=2,
        default=BUILD_DEFAULTS.ratio,
        metavar=("MIN", "MAX"),
        help="crop aspect ratio (width / height), 0 < MIN <= MAX (default: 3/4 4/3)",
    )
    add_settings(p, BuildSettings, ["shard_size", "num_workers"])
    p.add_argument("--device", default="auto", help="teacher device: auto, cpu, cuda, cuda:N (default: auto)")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="summarise a RIL table, check its files, plot it",
        description="Summarise a RIL table.",
    )
    p.add_argument("table", help="the table's folder")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw a histogram of w and the lowest/highest-w crops (default: no plot)",
    )
    p.add_argument(
        "--images",
        help="the image folder the table was built on (needed by --plot; default: the table alone)",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="also read every file and check its SHA-256 against the one recorded at build time",
    )
    p.set_defaults(handler=_inspect, parser=p)


def _add_train(sub: argparse._SubParsersAction) -> None:
    """``fdbpl train``: the options of :class:`~fdbpl.train.TrainConfig` and
    :class:`~fdbpl.losses.LossWeights` are generated from their fields (:mod:`fdbpl.options`);
    those written here read 'random' as ``None`` or pack several fields."""
    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train the dual prompts of a frozen student CLIP from a RIL table",
        description=(
            "Train positive and negative prompt contexts of a frozen student CLIP with the FDBPL loss "
            f"(Eq. 17) on crops replayed from TABLE. Writes RUN/{CONFIG}, RUN/{LOG} (every step's loss parts) "
            f"and RUN/{CHECKPOINT} after each epoch; an interrupted run resumes from its last checkpoint. "
            "Run under torchrun for data-parallel training."
        ),
    )
    p.add_argument("table", help="the RIL table (fdbpl build-cache)")
    p.add_argument("images", help="the image folder the table was built on")
    p.add_argument("--student", required=True, help="open_clip model name or path of a model-config JSON")
    p.add_argument(
        "--pretrained",
        help="open_clip tag, checkpoint path, or 'none' for random weights seeded by --seed; required "
        "for a named model (default: random weights for a config JSON)",
    )
    p.add_argument("--out", required=True, help="the run's folder")
    add_settings(p, TrainConfig, ["epochs", "batch_size", "lr", "momentum", "weight_decay"])
    add_settings(p, LossWeights)
    _add_prompt_arguments(p, d)
    _add_promptsrc_arguments(p, d)
    _add_data_arguments(p)
    add_method_arguments(p)
    p.set_defaults(handler=_train, parser=p)


def _add_prompt_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The base method and its prompts' shape and start."""
    p.add_argument(
        "--n-ctx",
        type=integer_type(1),
        help="context tokens of each randomly initialised space (default: 16, CoOp's); given alone, both "
        "spaces start random (otherwise from the init phrases below)",
    )
    p.add_argument(
        "--positive-init",
        metavar="PHRASE",
        help=f"init phrase of the positive context, or 'random' for --n-ctx random tokens (default: {d.positive_init!r})",
    )
    p.add_argument(
        "--negative-init",
        metavar="PHRASE",
        help=f"init phrase of the negative context, or 'random' (default: {d.negative_init!r})",
    )
    p.add_argument(
        "--method",
        choices=method_names(),
        default=d.method,
        help="the base method: "
        + "; ".join(f"{name} ({method_spec(name).summary})" for name in method_names())
        + f" (default: {d.method})",
    )
    add_settings(p, TrainConfig, ["class_specific", "meta_net", "init_from"])
    add_settings(p, TrainConfig, ["depth", "text_ctx", "vision_ctx", "gradient_checkpointing", "amp"])


def _add_promptsrc_arguments(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """PromptSRC's constraints and aggregation, each flag packing several fields."""
    p.add_argument(
        "--src-weights",
        type=number_type(minimum=0.0),
        nargs=3,
        metavar=("IMAGE", "TEXT", "LOGITS"),
        default=[d.src_image_weight, d.src_text_weight, d.src_logit_weight],
        help="promptsrc: weights of its image, text and logit constraints (default: "
        f"{d.src_image_weight:g} {d.src_text_weight:g} {d.src_logit_weight:g}, PromptSRC's base-to-new config)",
    )
    p.add_argument(
        "--gpa",
        type=number_type(),
        nargs=2,
        metavar=("MEAN", "STD"),
        default=[d.gpa_mean, d.gpa_std],
        help="promptsrc: the Gaussian over epochs (counted from 1) that averages the prompts "
        f"(default: {d.gpa_mean:g} {d.gpa_std:g}, PromptSRC's for 20 epochs)",
    )


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """Where the features and crops come from, the class subsets, workers, seed, device."""
    add_settings(p, TrainConfig, ["image_features", "class_chunk_size", "max_classes", "crops_per_image"])
    p.add_argument(
        "--classnames",
        help="file of the class names the student's split must have (checked against the table; "
        "default: the table's class names)",
    )
    add_settings(p, TrainConfig, ["num_workers", "seed"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="trust the table's bytes (default: check every file against its recorded SHA-256 before "
        "training, about a second per GB)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1 accuracy of a run's learned prompts (base, new, harmonic mean)",
        description=(
            "Top-1 accuracy of the student with the learned positive prompts on an image folder "
            "(centre crops). Classes are sorted; CoOp's split makes the first half base and the rest new. "
            "'base-new' evaluates both and prints Base, New and their harmonic mean, as in the paper's Table 2."
        ),
    )
    p.add_argument("run", help="a run folder (fdbpl train)")
    p.add_argument(
        "images",
        help="image folder to evaluate on (one sub-folder per class, all classes), or with --dataset CoOp's "
        "DATASET.ROOT",
    )
    p.add_argument(
        "--dataset",
        metavar="NAME",
        help="evaluate on the test split of this dataset of CoOp's layout under IMAGES (default: IMAGES is an "
        "image folder)",
    )
    p.add_argument(
        "--protocol",
        choices=["cross-dataset", "domain-generalisation"],
        help="with IMAGES as CoOp's DATASET.ROOT: the run's prompts on all classes of the ten other datasets "
        "(cross-dataset) or of ImageNet-V2/-Sketch/-A/-R (domain-generalisation), with their average; "
        "results also go to RUN/evaluation.json (default: neither, base-to-new)",
    )
    p.add_argument(
        "--classes",
        choices=CLASS_CHOICES,
        help="which of the run's classes to evaluate: its base half, the new half, all, or both halves "
        f"with their harmonic mean (default: {CLASS_CHOICES[-1]})",
    )
    p.add_argument(
        "--classnames",
        help="file with one class name per folder, in sorted order (default: the folder names)",
    )
    p.add_argument("--student", help="override the run's student model (default: the run's)")
    p.add_argument("--pretrained", help="override the run's student weights (default: the run's)")
    p.add_argument("--initial", action="store_true", help="also evaluate the initial prompts")
    p.add_argument(
        "--batch-size", type=integer_type(1), default=64, help="images per forward pass (default: 64)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.set_defaults(handler=_evaluate, parser=p)


def _add_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dataset",
        help="list a dataset of CoOp's layout as CoOp reads it (splits, shots, base/new)",
        description=(
            "Read one of the base-to-new benchmark's datasets from CoOp's layout under ROOT (its "
            "DATASETS.md) with CoOp's labels, class names, few-shot draw and base/new halves, and print "
            "a summary, or with --list one line per image: relative/path<TAB>label<TAB>class name, in "
            "CoOp's order (diff it against your CoOp run)."
        ),
    )
    p.add_argument("name", help="CoOp's dataset name, e.g. OxfordPets, ImageNet, ImageNetA (any case)")
    p.add_argument("--root", required=True, help="CoOp's DATASET.ROOT: the folder that holds the datasets")
    p.add_argument(
        "--split", choices=["train", "val", "test"], default="train", help="which split (default: train)"
    )
    p.add_argument(
        "--shots", type=integer_type(0), default=0, help="K images per class, 0 for all (default: 0)"
    )
    p.add_argument(
        "--seed", type=integer_type(0), default=1, help="the few-shot draw's seed, CoOp's --seed (default: 1)"
    )
    p.add_argument(
        "--subset", choices=["all", "base", "new"], default="all", help="CoOp's class halves (default: all)"
    )
    p.add_argument(
        "--fewshot-repeat",
        action="store_true",
        help="draw a class with fewer than K images with replacement, as Dassl did before 2022 "
        "(default: keep it whole, today's Dassl)",
    )
    p.add_argument("--list", action="store_true", help="one line per image instead of the summary")
    p.set_defaults(handler=_dataset, parser=p)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="the paper's tables from evaluated runs, averaged over seeds",
        description=(
            "Average the evaluations of RUNS (each folder's evaluation.json, written by fdbpl evaluate) and "
            "print the paper's tables as Markdown: base-to-new (Base, New, HM per dataset and their average) "
            "and the cross-dataset and domain-generalisation rows."
        ),
    )
    p.add_argument("runs", nargs="+", help="run folders, e.g. one per seed")
    p.add_argument(
        "--csv",
        metavar="FILE",
        help="also write every averaged number as CSV to FILE, creating its folder (default: no CSV)",
    )
    p.set_defaults(handler=_report, parser=p)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="the whole pipeline on drawn images and tiny models (no downloads)",
        description=(
            "Draw a small image-folder dataset, fit a tiny random-initialised teacher to it briefly, build "
            "its RIL table, train the dual prompts of a smaller random-initialised student, and report the "
            "student's top-1 agreement with the teacher on held-out crops before and after training. "
            "Every part can be replaced: real models (--teacher/--student with --*-pretrained) and data (--images)."
        ),
    )
    p.add_argument("--out", default=str(d.out), help=f"working folder (default: ./{d.out})")
    p.add_argument("--images", help="an image folder to use instead of drawn images (default: drawn images)")
    p.add_argument("--teacher", help="open_clip name or config JSON (default: a tiny config)")
    p.add_argument("--teacher-pretrained", help="tag or checkpoint for the teacher (default: random)")
    p.add_argument("--student", help="open_clip name or config JSON (default: a smaller tiny config)")
    p.add_argument("--student-pretrained", help="tag or checkpoint for the student (default: random)")
    p.add_argument(
        "--epochs",
        type=integer_type(1),
        default=d.epochs,
        help=f"epochs of prompt training (default: {d.epochs})",
    )
    p.add_argument(
        "--crops-per-image",
        type=integer_type(1),
        default=d.crops_per_image,
        help=f"regions per training image in the table, M (default: {d.crops_per_image})",
    )
    p.add_argument(
        "--topk", type=integer_type(1), default=d.topk, help=f"classes kept per region, K (default: {d.topk})"
    )
    p.add_argument(
        "--seed",
        type=integer_type(0),
        default=d.seed,
        help=f"seed of the images, crops and weights (default: {d.seed})",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_demo, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fdbpl",
        description="Faster Distillation-Based Prompt Learning for CLIP.",
        epilog="Run 'fdbpl COMMAND --help' for a command's options.",
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fdbpl {fdbpl.__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    _add_build_cache(sub)
    _add_inspect(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_dataset(sub)
    _add_report(sub)
    _add_demo(sub)
    return parser


def _read_classnames(path: str, flag: str = "--classnames") -> list[str]:
    """One class name per line, or a JSON list of strings."""
    text = read_file_text(path, flag, "a text file of class names (one per line, or a JSON list)")
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputValueError(f"{flag}: {path} is not a JSON list ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputValueError(f"{flag}: {path} is not a JSON list of strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    check_distinct_classnames(names, path)
    return names


def _device(arg: str, local_rank: int, kind: str) -> str:
    if arg == "auto":
        return f"cuda:{local_rank}" if kind == "cuda" else "cpu"
    return arg


def _training_images(args: argparse.Namespace) -> Any:
    """The scanned training images: an image folder, or a dataset of CoOp's layout; with
    ``--vocabulary`` the table's classes are the vocabulary's names."""
    scan = _scanned_images(args)
    if args.vocabulary:
        vocabulary = _read_classnames(args.vocabulary, "--vocabulary")
        if len(scan.classnames) > len(vocabulary):
            raise InputValueError(
                f"vocabulary: {len(vocabulary)} names, fewer than the {len(scan.classnames)} image classes"
            )
        scan.classnames = vocabulary  # the images keep their folder index, recorded but not a class
        if scan.source:  # a draw whose classes are not the table's: not compared when training
            scan.source = {**scan.source, "vocabulary": True}
    return scan


def _scanned_images(args: argparse.Namespace) -> Any:
    if args.dataset is None:
        classnames = _read_classnames(args.classnames) if args.classnames else None
        scan = scan_image_folder(args.images, classnames, normalize_classnames=not args.keep_underscores)
        return select_images(scan, args.subset, args.shots, args.seed)
    from fdbpl.cache.scan import scan_split
    from fdbpl.data import read_dataset

    data = read_dataset(
        args.dataset,
        args.images,
        num_shots=args.shots or 0,
        seed=args.seed,
        subsample=args.subset,
        repeat=args.fewshot_repeat,
    )
    if len({item.impath for item in data.train}) != len(data.train):
        raise InputValueError(
            "fewshot-repeat: the draw holds some images twice; a table holds each image once (its crops "
            "already give every image many regions): leave out --fewshot-repeat"
        )
    return scan_split(data, args.images, "train", normalize_classnames=not args.keep_underscores)


def _build_cache(args: argparse.Namespace) -> int:
    with process_group() as (local_rank, kind):
        device = _device(args.device, local_rank, kind)
        scan = _training_images(args)
        loaded = load_open_clip(args.teacher, args.pretrained, device=device, seed=args.seed)
        student = None
        if args.student:
            s = load_open_clip(args.student, args.student_pretrained, device=device, seed=args.seed)
            student = clip_student_features(s.model, s.input_recipe, s.identity())
        template = args.template
        if template == "dataset":
            if not args.dataset:
                raise InputValueError(
                    "template: 'dataset' takes the template of --dataset NAME; give --dataset"
                )
            from fdbpl.data import dataset_template

            template = dataset_template(args.dataset)
        teacher = clip_teacher(
            loaded.model,
            scan.classnames,
            loaded.tokenizer,
            loaded.image_size,
            loaded.mean,
            loaded.std,
            template=template,
            temperature=args.temperature,
            description=loaded.identity(),
        )
        summary = build_table(
            args.images,
            args.out,
            teacher,
            student=student,
            scan=scan,
            crops_per_image=args.crops_per_image,
            topk=args.topk,
            strategy=args.strategy,
            seed=args.seed,
            batch_size=args.batch_size,
            scale=tuple(args.scale),
            ratio=tuple(args.ratio),
            shard_size=args.shard_size,
            num_workers=args.num_workers,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        if rank_and_world()[0] == 0:
            print(summary)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    table = RILTable.open(args.table, verify=args.verify)
    print(table_report(table, verified=args.verify))
    if args.plot:
        from fdbpl.cache.plot import plot_table  # needs matplotlib, an optional dependency

        with_crops = plot_table(table, args.images, args.plot)
        print(
            f"plot        {args.plot}"
            + ("" if with_crops else " (histogram only: --images DIR adds the crops)")
        )
    return 0


def _inits(args: argparse.Namespace) -> dict[str, str | None]:
    """The two spaces' init phrases (None: random). ``--n-ctx`` alone makes both random."""
    given = {"positive": args.positive_init, "negative": args.negative_init}
    if args.n_ctx is not None and not any(given.values()):
        return {"positive": None, "negative": None}
    d = TrainConfig()
    defaults = {"positive": d.positive_init, "negative": d.negative_init}
    return {
        space: None if value == "random" else (value if value is not None else defaults[space])
        for space, value in given.items()
    }


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from the parsed options: every option named after a
    :class:`~fdbpl.train.TrainConfig` field as it is, then those that pack several fields or
    read 'random' as ``None``."""
    given = settings_from(TrainConfig, args)
    inits = _inits(args)
    given.update(
        positive_init=inits["positive"],
        negative_init=inits["negative"],
        src_image_weight=args.src_weights[0],
        src_text_weight=args.src_weights[1],
        src_logit_weight=args.src_weights[2],
        gpa_mean=args.gpa[0],
        gpa_std=args.gpa[1],
    )
    return TrainConfig(**given)


def _train(args: argparse.Namespace) -> int:
    with process_group() as (local_rank, kind):
        device = _device(args.device, local_rank, kind)
        classnames = _read_classnames(args.classnames) if args.classnames else None
        table = RILTable.open(args.table, classnames=classnames)
        student = load_open_clip(args.student, args.pretrained, device=device, seed=args.seed)
        config = _train_config(args)
        result = train(
            table,
            args.images,
            student.model,
            args.out,
            config=config,
            student_description=student.describe(),
            **student.recipe(),
            device=device,
            progress=not args.no_progress,
            verify=not args.no_verify,
        )
        if rank_and_world()[0] == 0:
            parts = ", ".join(f"{k} {v:.4f}" for k, v in result.last.items())
            print(
                f"{result.run}: trained {result.epochs_done} epochs, {result.steps} steps, "
                f"{result.seconds:.1f} s; last: {parts}"
            )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    folder = RunFolder(args.run)
    state = folder.load_checkpoint()
    recorded = folder.student()
    name = args.student or recorded.get("source") or recorded.get("name")
    if not name:
        raise InputValueError("student: the run does not record its student model; pass --student")
    # evaluation runs in one process: no process group, even when started under torchrun
    device = _device(args.device, 0, "cuda" if torch.cuda.is_available() else "cpu")
    pretrained = args.pretrained or recorded.get("pretrained")
    student = load_open_clip(name, pretrained, device=device, seed=int(recorded.get("seed", 0)))
    classnames = _read_classnames(args.classnames) if args.classnames else None
    if args.protocol:
        return _evaluate_protocol(args, state, student, device)
    scan = None
    if args.dataset:
        from fdbpl.cache.scan import scan_split
        from fdbpl.data import read_dataset

        scan = scan_split(read_dataset(args.dataset, args.images), args.images, "test", check=False)
    # a class-agnostic run (trained over a vocabulary) is evaluated on any class names
    transfer = bool(state.get("settings", {}).get("config", {}).get("max_classes"))
    classes = args.classes or CLASS_CHOICES[-1]
    subsets = ["base", "new"] if classes == "base-new" else [classes]
    rows = [("learned", state)] + ([("initial", None)] if args.initial else [])
    hm_head = "       HM" if len(subsets) == 2 else ""
    print(f"{'prompts':<9}" + "".join(f"{s.capitalize():>9}" for s in subsets) + hm_head)
    for label, st in rows:
        accs = [
            evaluate_prompts(
                student.model,
                args.images,
                st,
                s,
                classnames=classnames,
                batch_size=args.batch_size,
                device=device,
                scan=scan,
                transfer=transfer,
                **student.recipe(),
            ).percent
            for s in subsets
        ]
        hm = f"{harmonic_mean(*accs):9.2f}" if len(accs) == 2 else ""
        print(f"{label:<9}" + "".join(f"{a:9.2f}" for a in accs) + hm)
        if label == "learned" and len(accs) == 2:
            from fdbpl.protocols import BASE_TO_NEW, record_result

            name = args.dataset or Path(args.images).resolve().name
            record_result(args.run, BASE_TO_NEW, name, {"base": accs[0], "new": accs[1]})
    return 0


def _evaluate_protocol(
    args: argparse.Namespace, state: dict[str, Any], student: LoadedCLIP, device: str
) -> int:
    from fdbpl.protocols import record_result, run_protocol

    def accuracy(scan: Any) -> float:
        return evaluate_prompts(
            student.model,
            args.images,
            state,
            "all",
            batch_size=args.batch_size,
            device=device,
            scan=scan,
            transfer=True,
            **student.recipe(),
        ).percent

    results, missing = run_protocol(args.protocol, args.images, accuracy, state)
    for name, value in results.items():
        record_result(args.run, args.protocol, name, value)
        print(f"{name:<20}{value:9.2f}")
    average = sum(results.values()) / len(results)
    print(
        f"{'average':<20}{average:9.2f}"
        + (f"  ({len(results)} datasets; missing: {', '.join(missing)})" if missing else "")
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from fdbpl.cache.storage import write_bytes_atomic
    from fdbpl.report import report_tables

    markdown, table = report_tables(args.runs)
    print(markdown, end="")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(args.csv, table.encode("utf-8"))
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from fdbpl.data import read_dataset

    data = read_dataset(
        args.name,
        args.root,
        num_shots=args.shots,
        seed=args.seed,
        subsample=args.subset,
        repeat=args.fewshot_repeat,
    )
    items = getattr(data, args.split)
    if args.list:
        root = str(Path(args.root)) + "/"
        for item in items:
            path = item.impath[len(root) :] if item.impath.startswith(root) else item.impath
            print(f"{path}\t{item.label}\t{item.classname}")
        return 0
    print(
        f"{data.name}: {len(data.classnames)} classes; train {len(data.train)}, val {len(data.val)}, "
        f"test {len(data.test)} images"
        + (f" ({args.shots}-shot draw, seed {args.seed})" if args.shots else "")
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    run_demo(
        DemoConfig(
            out=Path(args.out),
            images=Path(args.images) if args.images else None,
            teacher=args.teacher,
            teacher_pretrained=args.teacher_pretrained,
            student=args.student,
            student_pretrained=args.student_pretrained,
            epochs=args.epochs,
            crops_per_image=args.crops_per_image,
            topk=args.topk,
            seed=args.seed,
            progress=not args.no_progress,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fdbpl`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _check_args(args)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            return int(args.handler(args))
    except FDBPLError as e:
        print(f"fdbpl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nfdbpl {args.command}: interrupted — run the same command again to resume", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a permission, a vanished file: the system's words, one line
        print(f"fdbpl {args.command}: error: {e}", file=sys.stderr)
        return 1


def _one_line_warning(command: str) -> Callable[..., None]:
    """Warnings as one line, ``fdbpl CMD: warning: ...``, without a source line."""

    def show(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        print(f"fdbpl {command}: warning: {message}", file=sys.stderr)

    return show


#: Options of a command that contradict each other: (command, option, the options it
#: cannot be given with, why). Each is refused before anything is loaded.
_CONFLICTS = (
    ("build-cache", "--vocabulary", ("--classnames",), "the vocabulary is the table's class names"),
    ("build-cache", "--dataset", ("--classnames",), "the dataset names its own classes"),
    (
        "evaluate",
        "--protocol",
        ("--dataset", "--classes", "--classnames", "--initial"),
        "a protocol evaluates the learned prompts on all classes of each of its datasets, named by the "
        "dataset",
    ),
)

#: Options that mean nothing without another: (command, option, the option it needs).
_REQUIRES = (("build-cache", "--student-pretrained", "--student"),)


def _given(args: argparse.Namespace, option: str) -> bool:
    return getattr(args, option[2:].replace("-", "_"), None) not in (None, False)


def _check_conflicts(args: argparse.Namespace) -> None:
    for command, option, others, why in _CONFLICTS:
        clash = (
            [o for o in others if _given(args, o)] if command == args.command and _given(args, option) else []
        )
        if clash:
            args.parser.error(f"{option}: cannot be given with {', '.join(clash)} ({why})")
    for command, option, needed in _REQUIRES:
        if command == args.command and _given(args, option) and not _given(args, needed):
            args.parser.error(f"{option}: needs {needed} (it gives {needed}'s weights)")


def _check_args(args: argparse.Namespace) -> None:
    """Checks that need several arguments or the machine, before anything is loaded."""
    parser = args.parser
    _check_conflicts(args)
    if getattr(args, "csv", None) and (Path(args.csv).is_dir() or Path(args.csv).parent.is_file()):
        parser.error(f"--csv: {args.csv} is a folder or lies in a file; expected the CSV file's path")
    if getattr(args, "scale", None) is not None:
        _check_range(parser, "--scale", args.scale, 1.0)
    if getattr(args, "ratio", None) is not None:
        _check_range(parser, "--ratio", args.ratio, None)
    if args.command == "build-cache":
        _check_out_folder(parser, "out", args.out)
    elif args.command in ("train", "demo"):
        _check_out_folder(parser, "--out", args.out)
    if args.command == "train":
        args.method_options = method_options_from(args, parser)
    if getattr(args, "device", None) is not None:
        _check_device(parser, args.device)
