"""Dassl's few-shot draw: for a seed and K shots, exactly the images CoOp + Dassl select."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fdbpl._checks import check_count
from fdbpl.data.items import Item

__all__ = ["dassl_fewshot", "fewshot_draw"]


def fewshot_draw(
    items: Sequence[Item], num_shots: int, rng: random.Random, repeat: bool = False
) -> list[Item]:
    """Dassl's ``generate_fewshot_dataset`` on one split, with the random generator ``rng``.

    Items are grouped by label in the order labels first appear; each group gives
    ``rng.sample(group, K)``. A class with fewer than K items is kept whole (today's Dassl,
    ``repeat=False``), or drawn with ``rng.choices(group, k=K)`` (``repeat=True``: Dassl
    before late 2021).
    """
    check_count("num_shots", num_shots)
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    drawn: list[Item] = []
    for group in groups.values():
        if len(group) >= num_shots:
            drawn.extend(rng.sample(group, num_shots))
        elif repeat:
            drawn.extend(rng.choices(group, k=num_shots))
        else:
            drawn.extend(group)
    return drawn


def dassl_fewshot(
    train: Sequence[Item], val: Sequence[Item], num_shots: int, seed: int, repeat: bool = False
) -> tuple[list[Item], list[Item]]:
    """The few-shot train and val splits CoOp draws for ``--seed S`` and K shots.

    CoOp's ``train.py`` seeds Python's ``random`` with S, then its dataset draws the train
    split with K shots and the val split with ``min(K, 4)``, in that order, from the one
    generator: that is what this does, with a ``random.Random(S)`` of its own (the global
    generator is untouched).

    Example:
        >>> from fdbpl.data import Item, dassl_fewshot
        >>> train = [Item(f"{c}{i}.jpg", c, str(c)) for c in range(2) for i in range(5)]
        >>> shots, _ = dassl_fewshot(train, [], num_shots=2, seed=1)
        >>> [i.label for i in shots]
        [0, 0, 1, 1]
    """
    check_count("seed", seed, minimum=0)
    rng = random.Random(seed)
    return fewshot_draw(train, num_shots, rng, repeat), fewshot_draw(val, min(num_shots, 4), rng, repeat)
