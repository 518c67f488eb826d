"""FDBPL training of the dual prompts from a RIL table (the CoOp-style loop, as a function).

The student CLIP stays frozen; only the prompt learner of the base method trains
(:func:`~fdbpl.prompts.build_learner`: CoOp's two contexts, CoCoOp's contexts and
meta-network, or the deep text and vision prompts of VPT, IVLP, MaPLe and PromptSRC), with :class:`~fdbpl.losses.FDBPLLoss` on :class:`~fdbpl.cache.RegionDataset`
batches. Under ``torchrun`` the learner is wrapped in ``DistributedDataParallel``: every
rank sees a disjoint share of each epoch and all ranks end with the same prompts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from fdbpl._checks import check_count, check_number
from fdbpl.aggregation import GPA_MEAN, GPA_STD
from fdbpl.cache import RegionDataset, RILTable
from fdbpl.cache.provenance import check_recorded_draw
from fdbpl.distributed import barrier, rank_and_world
from fdbpl.errors import InputValueError
from fdbpl.images import InputRecipe
from fdbpl.logits import logit_scale_of
from fdbpl.losses import FDBPLLoss
from fdbpl.losses.functional.promptsrc import IMAGE_WEIGHT, TEXT_WEIGHT
from fdbpl.losses.weights import DEFAULT_WEIGHTS, LossWeights
from fdbpl.methods import DEFAULT_METHOD, MethodSpec, MethodTerms, RunContext, StepOutputs, method_spec
from fdbpl.options import check_settings, setting
from fdbpl.prompts import (
    DEEP_DEFAULTS,
    META_NETS,
    NEGATIVE_INIT,
    POSITIVE_INIT,
    PromptLearnerBase,
    PromptModel,
    build_learner,
    load_authors_checkpoint,
)
from fdbpl.run import CHECKPOINT, RunFolder, load_run
from fdbpl.sparsify import SparseSoftLabels

__all__ = ["CHECKPOINT", "IMAGE_FEATURES", "TrainConfig", "TrainResult", "load_run", "train"]


#: Where a training step takes the student's image features from:
#: ``"auto"``: the table's stored ones when it has them (refused if they belong to another
#: student), else the image encoder on the replayed crops; ``"cached"``: the table's (an
#: error without them); ``"encode"``: always the image encoder.
IMAGE_FEATURES = ("auto", "cached", "encode")
# each deep setting's default per method, for the help texts
_DEEP = {
    key: ", ".join(f"{method} {values[key]}" for method, values in DEEP_DEFAULTS.items())
    for key in ("depth", "text_ctx", "vision_ctx")
}


@dataclass
class TrainConfig:
    """The hyper-parameters of a run. Defaults follow the paper where it gives them.

    The paper trains 50 epochs with SGD at learning rate 0.1, cosine annealing, batch 128;
    it gives no values for the loss weights, :math:`\\alpha` or :math:`\\delta` (ours: 1, 1,
    1, 1, 0.1). Momentum 0.9 and weight decay 5e-4 are CoOp's.

    ``n_ctx`` is the length of the contexts of the spaces without an init phrase
    (``positive_init`` or ``negative_init`` set to ``None``; default 16, CoOp's).
    ``max_classes`` trains class-agnostically (KDPL's setting, for a table over a large
    vocabulary): each step encodes only a subset of the classes — the union of the batch's
    stored Top-K classes, topped up to ``max_classes`` with the classes of highest mean
    teacher probability over the table — and the losses run over that subset, with the
    teacher's labels conditioned on it (:meth:`~fdbpl.sparsify.SparseSoftLabels.restrict`).
    ``image_features`` says where the student's image features come from (see
    :data:`IMAGE_FEATURES`); ``class_chunk_size`` bounds the text pass's memory (see
    :class:`~fdbpl.prompts.DualPromptLearner`). ``method`` is a registered base method
    (:func:`fdbpl.methods.method_names`; :doc:`/base-methods` lists them, and
    :func:`fdbpl.methods.register_method` adds one) and ``method_options`` its own options
    by name (see its :class:`~fdbpl.methods.MethodSpec`). ``meta_net`` is CoCoOp's meta-network,
    shared by the two spaces or one per space (:data:`~fdbpl.prompts.META_NETS`). The deep methods take ``depth``,
    ``text_ctx`` and ``vision_ctx`` (``None``: the method's own defaults,
    :data:`~fdbpl.prompts.DEEP_DEFAULTS`) and ``gradient_checkpointing``; ``promptsrc``
    its constraints' weights ``src_*`` and the Gaussian ``gpa_mean``, ``gpa_std``
    (:mod:`fdbpl.aggregation`). ``amp`` runs the towers under bfloat16 autocast (the
    losses stay float32). ``init_from`` starts a new run's positive space (and vision
    prompts) from a checkpoint saved by the base method's own trainer
    (:func:`~fdbpl.prompts.load_authors_checkpoint`; ``None``: the init phrases); a resumed
    run continues from its own checkpoint.
    """

    epochs: int = setting(50, "epochs of the cosine schedule", minimum=1, source="the paper's")
    batch_size: int = setting(128, "images per step per process", minimum=1, source="the paper's")
    lr: float = setting(0.1, "SGD learning rate, cosine schedule", positive=True, source="the paper's")
    momentum: float = setting(0.9, "SGD momentum", minimum=0.0, source="CoOp's")
    weight_decay: float = setting(5e-4, "SGD weight decay", minimum=0.0, source="CoOp's")
    lambda_neg: float = DEFAULT_WEIGHTS.lambda_neg
    lambda_diff1: float = DEFAULT_WEIGHTS.lambda_diff1
    lambda_diff2: float = DEFAULT_WEIGHTS.lambda_diff2
    alpha: float = DEFAULT_WEIGHTS.alpha
    delta: float = DEFAULT_WEIGHTS.delta
    n_ctx: int | None = None
    positive_init: str | None = POSITIVE_INIT
    negative_init: str | None = NEGATIVE_INIT
    class_specific: bool = setting(False, "one context per class (CoOp's CSC; default: one per space)")
    crops_per_image: int = setting(1, "regions per image per step", minimum=1)
    num_workers: int = setting(0, "data-loading worker processes", minimum=0)
    seed: int = setting(0, "seed of the data order and of random weights", minimum=0)
    image_features: str = setting(
        "auto",
        "the student's image features: the table's stored ones (cached; refused if another student's), "
        "the image encoder on the replayed crops (encode), or cached when the table has them (auto)",
        choices=IMAGE_FEATURES,
    )
    class_chunk_size: int | None = setting(
        None,
        "encode the class prompts this many classes at a time, recomputed in backward: bounds the text "
        "pass's memory for many classes (default: all classes at once)",
        minimum=1,
    )
    max_classes: int | None = setting(
        None,
        "class-agnostic training (a table over a vocabulary): each step encodes only the batch's Top-K "
        "classes topped up to this many by mean teacher probability, the labels conditioned on them "
        "(default: every class each step)",
        minimum=1,
    )
    method: str = DEFAULT_METHOD
    meta_net: str = setting(
        "shared",
        "cocoop: one meta-network for both spaces (shared) or one per space (per_space)",
        choices=META_NETS,
    )
    depth: int | None = setting(
        None, f"deep methods: layers that get prompts, in both towers (default: {_DEEP['depth']})", minimum=1
    )
    text_ctx: int | None = setting(
        None,
        "deep methods: learned text tokens per space and layer, the first ones of the init phrase "
        f"(default: {_DEEP['text_ctx']})",
        minimum=1,
    )
    vision_ctx: int | None = setting(
        None,
        f"deep methods: learned vision tokens per layer (maple: --text-ctx) (default: {_DEEP['vision_ctx']})",
        minimum=0,
    )
    src_image_weight: float = IMAGE_WEIGHT
    src_text_weight: float = TEXT_WEIGHT
    src_logit_weight: float = 1.0
    gpa_mean: float = GPA_MEAN
    gpa_std: float = GPA_STD
    gradient_checkpointing: bool = setting(
        False,
        "deep methods: recompute each image-tower block in backward instead of keeping its activations "
        "(less memory, about one more image forward per step; default: keep them)",
    )
    amp: bool = setting(
        False,
        "run the CLIP towers under bfloat16 autocast (on a GPU: less memory, faster); the losses stay "
        "float32 (default: float32 throughout)",
    )
    init_from: str | None = setting(
        None,
        "start the positive space (and vision prompts) from a checkpoint saved by the base method's own "
        "trainer (CoOp, CoCoOp, VPT, IVLP, MaPLe, PromptSRC: Dassl's model.pth.tar-N), read without running "
        "code from it; the negative space keeps its init (default: the init phrases)",
        metavar="PATH",
    )
    method_options: dict[str, Any] = field(default_factory=dict)

    @property
    def loss_weights(self) -> LossWeights:
        """The loss weights as one value (:class:`~fdbpl.losses.LossWeights`)."""
        return LossWeights(**{name: getattr(self, name) for name in LossWeights.__dataclass_fields__})

    def __post_init__(self) -> None:
        check_settings(self)  # every field made with setting(): its range or choices
        if self.n_ctx is not None:
            check_count("n_ctx", self.n_ctx)
            if self.positive_init is not None and self.negative_init is not None:
                raise InputValueError(
                    "n_ctx: sets the length of randomly initialised contexts, but both spaces start from "
                    "an init phrase; set positive_init and/or negative_init to None"
                )
        _check_method(self, method_spec(self.method))
        for name in ("src_image_weight", "src_text_weight", "src_logit_weight"):
            check_number(name, getattr(self, name), minimum=0.0)
        check_number("gpa_mean", self.gpa_mean)
        check_number("gpa_std", self.gpa_std, positive=True)
        _ = self.loss_weights  # refuses weights that are not finite numbers, negative lambdas and alpha


def _check_method(cfg: TrainConfig, spec: MethodSpec) -> None:
    """Refuse what the method's learner cannot do, its options, and its own refusals."""
    if not isinstance(cfg.method_options, dict):
        raise InputValueError(f"method_options: expected a dict, got {type(cfg.method_options).__name__}")
    spec.parse_options(cfg.method_options)
    if cfg.class_specific and not spec.class_specific:
        raise InputValueError(
            f"class_specific: the {spec.name} learner has one context per space ({spec.learner.__name__})"
        )
    if spec.prompts_images and cfg.image_features == "cached":
        raise InputValueError(
            f"image_features: the {spec.name} learner prompts the image tower, so its features cannot be "
            "the table's stored ones; use 'encode' (or 'auto')"
        )
    if cfg.gradient_checkpointing and not spec.prompts_images:
        raise InputValueError(
            f"gradient_checkpointing: only learners that prompt the image tower run it with gradients; "
            f"{spec.name} does not"
        )
    spec.check(cfg)


@dataclass
class TrainResult:
    run: Path
    epochs_done: int
    steps: int
    seconds: float
    last: dict[str, float] = field(default_factory=dict)


class _ShareSampler(torch.utils.data.Sampler[int]):
    """Each epoch, a seeded permutation of the items, dealt out to the ranks without padding.

    Unlike ``DistributedSampler`` it never repeats or drops an item to even out the ranks:
    every item is seen exactly once per epoch (ranks may differ by one batch; training
    uses DDP's ``join`` for that).
    """

    def __init__(self, n: int, rank: int, world: int, seed: int) -> None:
        self.n, self.rank, self.world, self.seed, self.epoch = n, rank, world, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def _flatten_crops(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(B, n, ...) items with several crops per image -> (B * n, ...)."""
    if batch["region"].ndim == 2:
        return {k: v.flatten(0, 1) for k, v in batch.items()}
    return batch


#: Settings that do not change what a run computes, so a resumed run may change them.
_FREE_ON_RESUME = ("num_workers", "class_chunk_size", "gradient_checkpointing")


def _check_same_settings(folder: RunFolder, state: dict[str, Any], settings: dict[str, Any]) -> None:
    """A run resumes only with the settings it started with; name the ones that differ.

    A finished cosine schedule cannot be extended (its learning rate is 0 from there on),
    so more ``epochs`` is refused like any other change.
    """
    run = folder.path
    if state.get("table_sha256") != settings["table_sha256"]:
        theirs = str(state.get("table_sha256"))
        raise InputValueError(
            f"run: {run} was trained on another table (manifest sha256 {theirs[:12]}, "
            f"this table {settings['table_sha256'][:12]}); choose a new run folder"
        )
    recorded = folder.settings(state)
    before = recorded.get("config", {})
    changed = [
        f"{k}: {before[k]!r} -> {v!r}"
        for k, v in settings["config"].items()
        if k in before and before[k] != v and k not in _FREE_ON_RESUME
    ]
    for key in ("student", "image_size"):
        if key in recorded and recorded[key] != settings[key]:
            changed.append(f"{key}: {recorded[key]!r} -> {settings[key]!r}")
    if changed:
        raise InputValueError(
            f"run: {run} was started with other settings ({'; '.join(changed)}); resume it with the same "
            "settings, or start a new run in another folder (a finished cosine schedule cannot be extended)"
        )


@dataclass
class _Session:
    """Everything one training run holds while it runs."""

    folder: RunFolder
    config: TrainConfig
    table: RILTable
    student: torch.nn.Module
    learner: PromptLearnerBase
    model: torch.nn.Module  # the PromptModel, or its DistributedDataParallel wrapper
    dataset: RegionDataset
    sampler: _ShareSampler
    loader: torch.utils.data.DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_fn: FDBPLLoss
    settings: dict[str, Any]
    device: torch.device
    steps_per_epoch: int
    logit_scale: torch.Tensor | float  # the frozen student's, read once
    class_ranking: torch.Tensor | None = None  # class-agnostic: class ids by mean teacher probability
    terms: MethodTerms | None = None  # what the base method adds to FDBPL's loss
    start_epoch: int = 0
    step: int = 0
    log: IO[str] | None = None
    last: dict[str, float] = field(default_factory=dict)


def train(
    table: RILTable,
    images: str | os.PathLike[str],
    student: torch.nn.Module,
    run: str | os.PathLike[str],
    *,
    config: TrainConfig | None = None,
    tokenizer: Any = None,
    image_size: int = 224,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    student_description: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    recipe: InputRecipe | None = None,
    verify: bool = True,
) -> TrainResult:
    """Train the dual prompts of ``student`` on the table's regions (Eq. 17).

    Writes ``RUN/config.json`` (the settings), ``RUN/log.jsonl`` (one line per step with
    every loss part, and one per epoch) and ``RUN/checkpoint.pt`` after every epoch (see
    :mod:`fdbpl.run`). A run whose checkpoint exists resumes after its last finished
    epoch, with the settings it started with.

    Args:
        table: the opened table (its class names are the classes trained).
        images: the image folder the table was built on.
        student: the student CLIP (frozen; an open_clip or OpenAI-clip model).
        run: the run's folder.
        config: hyper-parameters (:class:`TrainConfig`).
        tokenizer: the student's tokenizer (default: open_clip's).
        image_size, mean, std: the student's input recipe, or ``recipe``.
        student_description: what to record about the student.
        device: where to train.
        progress: show a progress bar (rank 0).
        recipe: the student's input as one value (:class:`~fdbpl.images.InputRecipe`,
            e.g. a loaded model's ``input_recipe``); replaces the three above.
        verify: first check the table's bytes against its recorded SHA-256
            (:meth:`RILTable.verify`: once per process, with a progress bar on rank 0);
            ``False`` trusts them.

    Raises:
        TableFormatError: ``verify`` found a table file that differs from its checksum.
        TableMismatchError: a table built from a dataset draw (``build-cache --dataset``)
            whose draw, read again under ``images``, is not its images
            (:func:`~fdbpl.cache.provenance.check_recorded_draw`).
        InputValueError: a checkpoint in ``run`` made for other class names, another
            table, another prompt shape, or other settings (named).
    """
    cfg = config or TrainConfig()
    recipe = InputRecipe.of(recipe, image_size, mean, std)
    rank, world = rank_and_world()
    if verify:
        table.verify(progress=progress and rank == 0)
    check_recorded_draw(table, images)
    session = _start_or_resume(
        table, images, student, RunFolder(run), cfg, tokenizer, recipe, student_description or {}, device
    )
    _resume_or_record(session, images)
    started = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        remaining = (cfg.epochs - session.start_epoch) * session.steps_per_epoch
        bar = tqdm(total=remaining, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(session.start_epoch, cfg.epochs):
            session.dataset.set_epoch(epoch)
            session.sampler.set_epoch(epoch)
            seen = torch.zeros(3, dtype=torch.float64)  # items, sum of ids, sum of squared ids
            with session.model.join() if world > 1 else contextlib.nullcontext():
                for batch in session.loader:
                    seen += _step(session, batch, epoch)
                    if bar is not None:
                        bar.set_postfix(_short_names(session.last), refresh=False)
                        bar.update(1)
            _end_of_epoch(session, epoch, seen)
    finally:
        if bar is not None:
            bar.close()
        if session.log is not None:
            session.log.close()
    if world > 1:
        _check_same_prompts(session.learner)
    return TrainResult(
        session.folder.path, cfg.epochs, session.step, time.perf_counter() - started, session.last
    )


def _start_or_resume(
    table: RILTable,
    images: str | os.PathLike[str],
    student: torch.nn.Module,
    folder: RunFolder,
    cfg: TrainConfig,
    tokenizer: Any,
    recipe: InputRecipe,
    student_description: dict[str, Any],
    device: str | torch.device,
) -> _Session:
    """Freeze the student and build what a run trains with: learner, data, optimizer, schedule."""
    rank, world = rank_and_world()
    device = torch.device(device)
    student = student.to(device).eval()
    for p in student.parameters():
        p.requires_grad_(False)
    spec = method_spec(cfg.method)
    prompts = _prompt_model(spec, student, table, cfg, tokenizer, device)
    model: torch.nn.Module = prompts
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            prompts, device_ids=[device.index] if device.type == "cuda" else None
        )
    dataset = RegionDataset(
        table,
        images,
        crops_per_image=cfg.crops_per_image,
        seed=cfg.seed,
        recipe=recipe,
        features=_stored_features(table, student, recipe, cfg.image_features, prompts.prompts_images),
        verify=False,  # train() verified it, or was told not to
    )
    sampler = _ShareSampler(len(dataset), rank, world, cfg.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers, drop_last=False
    )
    steps_per_epoch = math.ceil(len(dataset) / world / cfg.batch_size)
    optimizer = torch.optim.SGD(
        [p for p in prompts.learner.parameters() if p.requires_grad],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, cfg.epochs * steps_per_epoch)
    )
    settings = {
        "config": asdict(cfg),
        "table_sha256": table.manifest_sha256,
        # where the table's images came from (dataset, split, shots, seed, subset), if recorded
        "table_source": table.manifest.get("source"),
        "student": student_description,
        "image_size": recipe.size,
    }
    logit_scale = logit_scale_of(student)
    return _Session(
        folder=folder,
        config=cfg,
        table=table,
        student=student,
        learner=prompts.learner,
        model=model,
        dataset=dataset,
        sampler=sampler,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        loss_fn=FDBPLLoss.from_weights(cfg.loss_weights),
        settings=settings,
        device=device,
        steps_per_epoch=steps_per_epoch,
        logit_scale=logit_scale,
        class_ranking=class_ranking(table).to(device) if cfg.max_classes is not None else None,
        terms=_method_terms(spec, student, prompts.learner, table, cfg, tokenizer, device, logit_scale),
    )


def _prompt_model(
    spec: MethodSpec,
    student: torch.nn.Module,
    table: RILTable,
    cfg: TrainConfig,
    tokenizer: Any,
    device: torch.device,
) -> PromptModel:
    """The method's learner over the student: the common options, then the method's own."""
    options: dict[str, Any] = {
        "tokenizer": tokenizer,
        "positive_init": cfg.positive_init,
        "negative_init": cfg.negative_init,
        "class_chunk_size": cfg.class_chunk_size,
        "normalize_classnames": False,  # the table's names, normalised when it was built (or kept on purpose)
        **spec.learner_options(cfg),
    }
    return build_learner(spec.name, student, table.classnames, **options).to(device)


def _method_terms(
    spec: MethodSpec,
    student: torch.nn.Module,
    learner: torch.nn.Module,
    table: RILTable,
    cfg: TrainConfig,
    tokenizer: Any,
    device: torch.device,
    logit_scale: torch.Tensor | float,
) -> MethodTerms | None:
    """What the base method adds to the run (its :class:`~fdbpl.methods.MethodTerms`), if anything."""
    if spec.terms is None:
        return None
    run = RunContext(
        student=student,
        learner=learner,
        classnames=table.classnames,
        tokenizer=tokenizer,
        config=cfg,
        options=spec.parse_options(cfg.method_options),
        device=device,
        logit_scale=logit_scale,
        template=str(table.manifest["teacher"].get("template", "a photo of a {}.")),
    )
    return spec.terms(run)


def class_ranking(table: RILTable) -> torch.Tensor:
    """Class ids by decreasing mean teacher probability over the table's regions (the Top-K
    values summed per class; ties by class id)."""
    total = torch.zeros(table.num_classes, dtype=torch.float64)
    for start in range(0, len(table), 1 << 16):
        labels = table.regions(range(start, min(start + (1 << 16), len(table)))).labels
        total.index_add_(0, labels.indices.flatten(), labels.values.double().flatten())
    return torch.sort(-total, stable=True).indices


def batch_classes(indices: torch.Tensor, ranking: torch.Tensor, budget: int) -> torch.Tensor:
    """A batch's class subset: its stored Top-K classes (all of them, whatever the budget),
    then the highest-ranked other classes until ``budget`` classes; sorted ids."""
    present = torch.zeros(len(ranking), dtype=torch.bool, device=indices.device)
    present[indices.flatten()] = True
    missing = budget - int(present.sum())
    if missing > 0:
        others = ranking[~present[ranking]][:missing]
        present[others] = True
    return present.nonzero().flatten()


def _stored_features(
    table: RILTable, student: torch.nn.Module, recipe: InputRecipe, how: str, prompted: bool = False
) -> bool:
    """Whether steps take the table's stored image features (see :data:`IMAGE_FEATURES`);
    stored features of another student or input recipe are refused. A learner that prompts
    the image tower (``prompted``) needs the images."""
    if prompted or how == "encode" or (how == "auto" and not table.has_features):
        return False
    table.check_student(student, recipe)  # also refuses "cached" on a table without features
    return True


#: The loss parts as the progress bar names them (Eq. 17's terms).
_SHORT = {
    "total": "loss",
    "positive": "pos",
    "negative": "neg",
    "first_order": "diff1",
    "second_order": "diff2",
}


def _short_names(parts: dict[str, float]) -> dict[str, str]:
    return {_SHORT.get(k, k): f"{v:.3f}" for k, v in parts.items()}


def _resume_or_record(session: _Session, images: str | os.PathLike[str]) -> None:
    """Resume from the folder's checkpoint (same settings only), or record a new run's settings."""
    rank, world = rank_and_world()
    folder = session.folder
    if folder.has_checkpoint():
        state = folder.load_checkpoint()
        _check_same_settings(folder, state, session.settings)
        session.learner.load_state_dict(state["learner"])  # refuses other class names or n_ctx
        session.optimizer.load_state_dict(state["optimizer"])
        session.scheduler.load_state_dict(state["scheduler"])
        session.start_epoch, session.step = int(state["epoch"]), int(state["step"])
        if session.terms is not None:
            session.terms.load_state_dict(state)
        if rank == 0:
            folder.trim_log(session.start_epoch)
    else:
        init_from = session.config.init_from
        if init_from is not None:  # every rank reads it: the same prompts everywhere
            load_authors_checkpoint(session.learner, init_from)
        if rank == 0:
            info = {"table": str(session.table.path), "images": str(images), "world_size": world}
            folder.write_config({**session.settings, **info})
            folder.trim_log(0)  # an attempt killed before its first checkpoint starts over
    session.log = folder.open_log() if rank == 0 else None


def _step(session: _Session, batch: dict[str, torch.Tensor], epoch: int) -> torch.Tensor:
    """One optimisation step; returns (items, sum of item ids, sum of their squares) it saw."""
    table, device = session.table, session.device
    # the item of a region is its image (one item per image and epoch)
    ids = (batch["region"].reshape(len(batch["region"]), -1)[:, 0] // table.crops_per_image).double()
    batch = _flatten_crops(batch)
    labels = SparseSoftLabels.from_batch(batch, table.num_classes).to(device)
    classes = None
    if session.class_ranking is not None:  # class-agnostic: this batch's class subset
        classes = batch_classes(labels.indices, session.class_ranking, session.config.max_classes)
        labels = labels.restrict(classes)
    images = None
    # the towers in bfloat16 with --amp; the losses compute in float32 outside autocast
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=session.config.amp):
        if "features" in batch:  # stored by the table: the frozen image encoder's output
            stored = batch["features"].to(device=device, dtype=torch.float32)
            image_features, positive, negative = session.model(image_features=stored, classes=classes)
        else:  # the image encoder runs inside: frozen (no_grad), or with the learner's vision prompts
            images = batch["image"].to(device)
            image_features, positive, negative = session.model(images, classes=classes)
    weight = batch["weight"].to(device)
    out = session.loss_fn(image_features, positive, negative, labels, weight, session.logit_scale)
    if session.terms is not None:  # what the base method adds to FDBPL's loss
        extra = session.terms.loss(StepOutputs(images, image_features, positive, negative, classes))
        if extra is not None:
            out = out.plus(extra.total, **extra.parts)
    session.optimizer.zero_grad(set_to_none=True)
    out.total.backward()
    session.optimizer.step()
    session.scheduler.step()
    session.step += 1
    session.last = {k: float(v.detach()) for k, v in out.as_dict().items()}
    if session.log is not None:
        lr = session.scheduler.get_last_lr()[0]
        session.log.write(json.dumps({"epoch": epoch, "step": session.step, "lr": lr, **session.last}) + "\n")
    return torch.stack([torch.tensor(float(len(ids))), ids.sum(), (ids**2).sum()])


def _end_of_epoch(session: _Session, epoch: int, seen: torch.Tensor) -> None:
    """Log what the epoch saw, on every rank together, and write the checkpoint (rank 0)."""
    rank, world = rank_and_world()
    if world > 1:
        torch.distributed.all_reduce(seen)
    if session.terms is not None:  # e.g. PromptSRC's Gaussian prompt aggregation
        session.terms.end_of_epoch(epoch, session.config.epochs)
    if rank == 0:
        assert session.log is not None
        counts = {"items": int(seen[0]), "item_id_sum": int(seen[1]), "item_id_square_sum": int(seen[2])}
        session.log.write(json.dumps({"epoch": epoch, "epoch_done": True, **counts}) + "\n")
        session.log.flush()
        session.folder.save_checkpoint(
            {
                "learner": session.learner.state_dict(),
                "optimizer": session.optimizer.state_dict(),
                "scheduler": session.scheduler.state_dict(),
                "epoch": epoch + 1,
                "step": session.step,
                "classnames": session.table.classnames,
                "table_sha256": session.settings["table_sha256"],
                "settings": session.settings,
                "student": session.settings["student"],
                **(session.terms.state_dict() if session.terms is not None else {}),
            }
        )
    barrier()


def _check_same_prompts(learner: PromptLearnerBase) -> None:
    """After DDP training every rank must hold the same contexts; fail loudly if not."""
    for p in learner.parameters():
        reference = p.detach().clone()
        torch.distributed.broadcast(reference, src=0)
        if not torch.equal(reference, p.detach()):
            raise RuntimeError("distributed training ended with different prompts on different ranks")
