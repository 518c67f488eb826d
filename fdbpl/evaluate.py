"""Zero-shot evaluation of learned prompts: top-1 accuracy on an image folder, base-to-new."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fdbpl._checks import first_difference
from fdbpl.cache.scan import ScanResult, scan_image_folder
from fdbpl.errors import InputValueError
from fdbpl.images import InputRecipe, decode_image, preprocess
from fdbpl.logits import clip_logits
from fdbpl.prompts import DualPromptLearner, PromptModel, learner_from_state_dict
from fdbpl.subsets import Subset, select_images, split_classes

__all__ = ["Accuracy", "check_run_classes", "evaluate_prompts", "harmonic_mean", "preprocess"]


@dataclass
class Accuracy:
    subset: str
    correct: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.correct / max(self.total, 1)


def harmonic_mean(a: float, b: float) -> float:
    """The paper's HM of base and new accuracy."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def check_run_classes(trained: list[str], folder: list[str], images: object) -> None:
    """The run's classes must be all of the folder's, or its base half (CoOp's split).

    Otherwise "Base" and "New" would be measured on classes the run never saw as such.

    Raises:
        InputValueError: naming the first class that differs.
    """
    base = [folder[i] for i in split_classes(len(folder), "base")]
    if trained in (folder, base):
        return
    want = base if len(trained) == len(base) else folder
    first = first_difference(trained, want)
    theirs = trained[first] if first < len(trained) else "<end>"
    mine = want[first] if first < len(want) else "<end>"
    raise InputValueError(
        f"images: the run was trained on {len(trained)} classes, which are neither the {len(folder)} classes "
        f"of {images} nor their base half; first difference at index {first}: {theirs!r} in the run vs "
        f"{mine!r} in the folder"
    )


@torch.no_grad()
def evaluate_prompts(
    student: torch.nn.Module,
    images: str | os.PathLike[str],
    state: dict[str, Any] | None,
    subset: Subset = "all",
    *,
    classnames: list[str] | None = None,
    tokenizer: Any = None,
    image_size: int = 224,
    mean: Any = None,
    std: Any = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    recipe: InputRecipe | None = None,
    scan: ScanResult | None = None,
    transfer: bool = False,
) -> Accuracy:
    """Top-1 accuracy of the student with the (learned) positive prompts on an image folder.

    Classes are the folder's (sorted; ``subset`` picks CoOp's base half, new half or all)
    and the candidates are that subset's class names only. The student's input is
    ``recipe`` (:class:`~fdbpl.images.InputRecipe`) or ``image_size``, ``mean`` and ``std``.
    ``scan`` gives the images and classes instead of the folder's (paths relative to
    ``images``; e.g. a dataset's test split, :func:`fdbpl.cache.scan.scan_image_list`).
    ``transfer``: the classes are another dataset's (cross-dataset and domain
    generalisation): the run's shared contexts are given their names, unchecked.

    Raises:
        InputValueError: a run trained on classes that are neither the folder's nor its
            base half (:func:`check_run_classes`), a file of the evaluation set that is not
            a readable image (leaving it out would measure another test set), or no image
            of the subset.
    """
    recipe = InputRecipe.of(recipe, image_size, mean, std)
    full = scan if scan is not None else scan_image_folder(images, classnames, check=False)
    if full.skipped:
        path, why = full.skipped[0]
        raise InputValueError(
            f"images: {len(full.skipped)} file(s) of the evaluation set under {images} are not readable "
            f"images, e.g. {path} ({why}); an accuracy without them is over another test set: remove them"
        )
    if state is not None and "classnames" in state and not transfer:
        check_run_classes(list(state["classnames"]), full.classnames, images)
    scan = select_images(full, subset)
    if not scan.images:
        raise InputValueError(f"images: no image of the {subset} classes under {images}")
    student = student.to(device).eval()
    if state is None:
        learner = DualPromptLearner(student, scan.classnames, tokenizer=tokenizer)
    else:
        learner = learner_from_state_dict(student, state["learner"], scan.classnames, tokenizer)
    prompts = PromptModel(learner.to(device), student)
    text = None if prompts.per_image else learner.normalized_features()[0].float()
    correct = 0
    root = Path(images)
    for start in range(0, len(scan.images), batch_size):
        recs = scan.images[start : start + batch_size]
        x = torch.stack(
            [preprocess(decode_image(root / r.path), recipe.size, recipe.mean, recipe.std) for r in recs]
        )
        # with the learner's vision prompts when it prompts the image tower
        feats = torch.nn.functional.normalize(prompts.image_features(x.to(device)).float(), dim=-1)
        if text is None:  # per-image text features (CoCoOp)
            scores = clip_logits(feats, learner(feats)[0], 1.0)
        else:
            scores = feats @ text.T
        pred = scores.argmax(dim=1).cpu()
        correct += int((pred == torch.tensor([r.label for r in recs])).sum())
    return Accuracy(subset, correct, len(scan.images))
