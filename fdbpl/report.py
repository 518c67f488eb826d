"""``fdbpl report``: the paper's tables from the evaluations of several runs (seeds).

Every ``fdbpl evaluate`` of a run adds its results to ``RUN/evaluation.json``
(:mod:`fdbpl.protocols`): base-to-new accuracy per dataset, and per-dataset accuracy of
the cross-dataset and domain-generalisation protocols. :func:`report_tables` averages
each number over the runs that have it and lays them out as the paper does: one row per
dataset with Base, New and their harmonic mean and an average row (HM of the averages, as
CoOp's tables), and one row per transfer protocol with a column per target and their
average.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

from fdbpl.errors import InputValueError
from fdbpl.protocols import BASE_TO_NEW, EVALUATION, PROTOCOLS, read_evaluation

__all__ = ["collect", "report_tables"]


def _hm(a: float, b: float) -> float:
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def collect(runs: list[str | os.PathLike[str]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Every recorded number of the runs: ``{protocol: {dataset: {metric: [one per run]}}}``.

    Raises:
        InputValueError: a run given twice, a run without ``evaluation.json`` (evaluate it
            first), or one that :func:`~fdbpl.protocols.read_evaluation` refuses.
    """
    out: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    seen: dict[Path, str] = {}
    for run in runs:
        key = Path(run).resolve()
        if key in seen:
            raise InputValueError(f"runs: {run} and {seen[key]} are the same run folder; give each run once")
        seen[key] = str(run)
        path = Path(run) / EVALUATION
        if not path.exists():
            raise InputValueError(f"runs: {path} does not exist (run fdbpl evaluate on {run} first)")
        results = read_evaluation(path)
        for protocol, by_dataset in results.items():
            for dataset, value in by_dataset.items():
                metrics = value if isinstance(value, dict) else {"accuracy": value}
                for metric, number in metrics.items():
                    out[protocol][dataset][metric].append(float(number))
    return out


def report_tables(runs: list[str | os.PathLike[str]]) -> tuple[str, str]:
    """The Markdown tables and the CSV of the runs' evaluations, averaged over runs."""
    data = collect(runs)
    md: list[str] = []
    rows: list[list[Any]] = [["protocol", "dataset", "metric", "mean", "runs"]]
    if BASE_TO_NEW in data:
        md += [
            f"### Base-to-new ({len(runs)} run(s))",
            "",
            "| dataset | Base | New | HM |",
            "| --- | ---: | ---: | ---: |",
        ]
        bases, news = [], []
        for dataset, metrics in data[BASE_TO_NEW].items():
            base, new = fmean(metrics["base"]), fmean(metrics["new"])
            bases.append(base)
            news.append(new)
            md.append(f"| {dataset} | {base:.2f} | {new:.2f} | {_hm(base, new):.2f} |")
            rows += [[BASE_TO_NEW, dataset, m, f"{fmean(v):.4f}", len(v)] for m, v in metrics.items()]
        b, n = fmean(bases), fmean(news)
        md += [f"| **average** | {b:.2f} | {n:.2f} | {_hm(b, n):.2f} |", ""]
    for protocol, targets in PROTOCOLS.items():
        if protocol not in data:
            continue
        present = [t for t in targets if t in data[protocol]]
        means = [fmean(data[protocol][t]["accuracy"]) for t in present]
        md += [
            f"### {protocol} ({len(runs)} run(s))",
            "",
            "| " + " | ".join([*present, "average"]) + " |",
            "| " + " | ".join(["---:"] * (len(present) + 1)) + " |",
            "| " + " | ".join(f"{m:.2f}" for m in [*means, fmean(means)]) + " |",
            "",
        ]
        rows += [
            [protocol, t, "accuracy", f"{m:.4f}", len(data[protocol][t]["accuracy"])]
            for t, m in zip(present, means)
        ]
    if not md:
        raise InputValueError("runs: their evaluation.json files hold no results")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return "\n".join(md).rstrip() + "\n", buffer.getvalue()
