"""Reference implementations shared by the tests and the benchmarks.

Literal, slow forms of single equations live in the test file of the function they check;
this module holds the ones that a benchmark also needs as its baseline.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import torch

from fdbpl.data import Item


def naive_broadcast_second(f, pos, neg, labels, w, delta):
    """The obvious vectorised form: builds the (N, N, D) tensor. Reference for precision."""
    d1 = (pos - neg)[labels]
    d2 = d1[:, None, :] - d1[None, :, :]
    s = (f[:, None, :] * d2).sum(-1) / (f.norm(dim=1)[:, None] * d2.norm(dim=-1).clamp_min(1e-8))
    mask = labels[:, None] != labels[None, :]
    terms = torch.where(mask, w[:, None] * w[None, :] * torch.relu(s + delta), 0.0)
    n = f.shape[0]
    return terms.sum() / max(n * (n - 1), 1)


# -- CoOp and Dassl, written plainly from the behaviour they document (fdbpl.data) ---------


def dassl_generate_fewshot(data_source, num_shots, repeat):
    """Dassl's generate_fewshot_dataset on one split, on the global ``random``."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for _label, items in tracker.items():
        if len(items) >= num_shots:
            sampled = random.sample(items, num_shots)
        elif repeat:
            sampled = random.choices(items, k=num_shots)
        else:
            sampled = items
        dataset.extend(sampled)
    return dataset


def coop_draw(train, val, num_shots, seed, repeat):
    """CoOp: train.py seeds the global generator, the dataset draws train, then val."""
    state = random.getstate()
    try:
        random.seed(seed)
        return dassl_generate_fewshot(train, num_shots, repeat), dassl_generate_fewshot(
            val, min(num_shots, 4), repeat
        )
    finally:
        random.setstate(state)


def coop_subsample(*args, subsample):
    if subsample == "all":
        return [list(a) for a in args]
    labels = sorted({item.label for item in args[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    out = []
    for dataset in args:
        out.append(
            [
                Item(i.impath, relabeler[i.label], i.classname, i.domain)
                for i in dataset
                if i.label in selected
            ]
        )
    return out
