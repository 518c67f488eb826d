"""The hand-crafted prompt of CoOp's zero-shot CLIP baseline for each dataset."""

from __future__ import annotations

from fdbpl.data.datasets import dataset_layout

__all__ = ["DATASET_TEMPLATES", "dataset_template"]

#: CoOp's zero-shot templates by dataset (its ``CUSTOM_TEMPLATES``); the paper's teacher
#: prompt, "a photo of a {}.", stays fdbpl's default.
DATASET_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


def dataset_template(name: str) -> str:
    """The zero-shot template of a dataset named as CoOp names it (any case).

    Example:
        >>> from fdbpl.data import dataset_template
        >>> dataset_template("eurosat")
        'a centered satellite photo of {}.'
    """
    return DATASET_TEMPLATES[dataset_layout(name).name]
