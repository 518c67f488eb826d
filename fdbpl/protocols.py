"""The paper's transfer protocols over datasets of CoOp's layout: cross-dataset (Table 1)
and domain generalisation (Table 6).

Prompts learned on a source dataset (ImageNet in the paper) are evaluated, with their
shared contexts given each target's class names, on all classes of every target's test
split: the ten other datasets of the benchmark (cross-dataset) or ImageNet's four variants
(domain generalisation). Results are written to ``RUN/evaluation.json`` (JSON, atomic),
one entry per protocol and dataset, so runs of several seeds can be averaged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fdbpl.cache.scan import scan_split
from fdbpl.cache.storage import write_json_atomic
from fdbpl.data import read_dataset
from fdbpl.data.datasets import DATASETS
from fdbpl.errors import InputValueError
from fdbpl.files import read_file_text

__all__ = ["BASE_TO_NEW", "EVALUATION", "PROTOCOLS", "read_evaluation", "record_result", "run_protocol"]

#: The targets of each protocol, in the paper's column order.
PROTOCOLS = {
    "cross-dataset": (
        "Caltech101",
        "OxfordPets",
        "StanfordCars",
        "OxfordFlowers",
        "Food101",
        "FGVCAircraft",
        "SUN397",
        "DescribableTextures",
        "EuroSAT",
        "UCF101",
    ),
    "domain-generalisation": ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"),
}

#: The file in a run folder that collects its evaluations.
EVALUATION = "evaluation.json"

#: The protocol key of base-to-new results: ``{dataset: {"base": acc, "new": acc}}``.
BASE_TO_NEW = "base-to-new"


def _accuracy(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputValueError(
            f"{where}: expected an accuracy in [0, 100], got {type(value).__name__} {value!r}"
        )
    if not 0.0 <= value <= 100.0:  # NaN fails both
        raise InputValueError(f"{where}: expected an accuracy in [0, 100], got {value!r}")
    return float(value)


def _dataset_results(protocol: str, by_dataset: Any, where: str) -> dict[str, Any]:
    if not isinstance(by_dataset, dict):
        raise InputValueError(f"{where}: expected a mapping of datasets, got {type(by_dataset).__name__}")
    out: dict[str, Any] = {}
    for dataset, value in by_dataset.items():
        at = f"{where}.{dataset}"
        if protocol == BASE_TO_NEW:
            if not isinstance(value, dict) or set(value) != {"base", "new"}:
                raise InputValueError(f"{at}: expected {{'base': accuracy, 'new': accuracy}}, got {value!r}")
            out[dataset] = {k: _accuracy(value[k], f"{at}.{k}") for k in ("base", "new")}
        elif dataset not in PROTOCOLS[protocol]:
            raise InputValueError(
                f"{at}: unknown {protocol} dataset; its datasets: {', '.join(PROTOCOLS[protocol])}"
            )
        else:
            out[dataset] = _accuracy(value, at)
    return out


def read_evaluation(path: str | Path) -> dict[str, dict[str, Any]]:
    """A run's ``evaluation.json``, validated: known protocols, known datasets of the
    transfer protocols, accuracies that are numbers in ``[0, 100]`` (no NaN).

    Raises:
        InputValueError: naming the file and the field (``evaluation.json: cross-dataset.EuroSAT``).
    """
    text = read_file_text(path, "evaluation", "a run's evaluation.json (written by fdbpl evaluate)")
    try:
        results = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputValueError(f"evaluation: {path} is not valid JSON ({e})") from None
    if not isinstance(results, dict):
        raise InputValueError(f"{path}: expected a mapping of protocols, got {type(results).__name__}")
    known = [BASE_TO_NEW, *PROTOCOLS]
    for protocol in results:
        if protocol not in known:
            raise InputValueError(f"{path}: {protocol}: unknown protocol; known: {', '.join(known)}")
    return {p: _dataset_results(p, v, f"{path}: {p}") for p, v in results.items()}


def record_result(run: str | Path, protocol: str, dataset: str, accuracy: float | dict[str, float]) -> None:
    """Add one result to ``RUN/evaluation.json``: ``{protocol: {dataset: accuracy}}``, or
    ``{"base-to-new": {dataset: {"base": ..., "new": ...}}}``; evaluating again replaces it."""
    path = Path(run) / EVALUATION
    results: dict[str, Any] = read_evaluation(path) if path.exists() else {}
    value = (
        {k: round(float(v), 4) for k, v in accuracy.items()}
        if isinstance(accuracy, dict)
        else round(float(accuracy), 4)
    )
    results.setdefault(protocol, {})[dataset] = value
    write_json_atomic(path, results)


def run_protocol(
    protocol: str,
    root: str | Path,
    evaluate: Callable[..., float],
    state: dict[str, Any],
) -> tuple[dict[str, float], list[str]]:
    """Evaluate a run on every target of ``protocol`` found under ``root``.

    Args:
        protocol: a key of :data:`PROTOCOLS`.
        root: CoOp's ``DATASET.ROOT``.
        evaluate: ``evaluate(scan=...) -> accuracy in percent`` on all classes of a scan.
        state: the run's checkpoint (its learner's contexts must be shared, not per class).

    Returns:
        ``(accuracies by dataset, datasets missing under root)``.

    Raises:
        InputValueError: an unknown protocol, class-specific contexts (they belong to the
            source's classes), or no target under ``root``.
    """
    if protocol not in PROTOCOLS:
        raise InputValueError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")
    config = state.get("learner", {}).get("_extra_state", {})
    if config.get("class_specific"):
        raise InputValueError(
            f"protocol: {protocol} gives the run's contexts other classes' names, but its contexts are "
            "class-specific (CSC): train with shared contexts to transfer them"
        )
    results: dict[str, float] = {}
    missing = []
    for name in PROTOCOLS[protocol]:
        if not (Path(root) / DATASETS[name].folder).is_dir():
            missing.append(name)
            continue
        results[name] = evaluate(scan=scan_split(read_dataset(name, root), root, "test", check=False))
    if not results:
        raise InputValueError(
            f"root: none of the {protocol} datasets ({', '.join(PROTOCOLS[protocol])}) is under {root}"
        )
    return results, missing
