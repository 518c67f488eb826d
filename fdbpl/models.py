"""Loading open_clip models by name or config file, with real or random weights."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fdbpl.errors import InputValueError

__all__ = ["LoadedCLIP", "load_open_clip"]

_RANDOM = ("none", "random", "")


@dataclass
class LoadedCLIP:
    """An open_clip model with what the rest of the pipeline needs to know about it."""

    model: torch.nn.Module
    name: str
    pretrained: str
    source: str  # what was asked for: a model name or a config file path
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: Any

    def recipe(self) -> dict[str, Any]:
        """The keyword arguments :func:`fdbpl.train.train` and evaluation take from a loaded model."""
        return {
            "tokenizer": self.tokenizer,
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "pretrained": self.pretrained,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _model_name(model: str) -> str:
    import open_clip

    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise InputValueError(f"model: config file {model} does not exist")
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise InputValueError(
            f"model: {model!r} is neither an open_clip model name (see open_clip.list_models()) nor a "
            "path to a model-config JSON file"
        )
    return model


def load_open_clip(
    model: str, pretrained: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu"
) -> LoadedCLIP:
    """Create an open_clip model from a name or a config JSON, with weights from a tag or a file.

    Args:
        model: an open_clip model name (``"ViT-B-32"``) or the path of a model-config JSON
            file (registered with ``open_clip.add_model_config``; its stem is the name).
        pretrained: an open_clip pretrained tag (``"openai"``), the path of a local
            checkpoint, or ``None`` / ``"none"`` for random initialisation (with a warning:
            a random teacher or student teaches nothing real).
        device: where to put the model.

    Returns:
        :class:`LoadedCLIP`, the model in eval mode with its input size, normalisation and
        tokenizer.
    """
    import open_clip

    name = _model_name(str(model))
    tag = "none" if pretrained is None or str(pretrained).lower() in _RANDOM else str(pretrained)
    if tag == "none":
        warnings.warn(
            f"{name} is random-initialised (pretrained=none): its predictions are noise; pass "
            "pretrained='openai' (or another tag) or a checkpoint path for real weights",
            UserWarning,
            stacklevel=2,
        )
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # open_clip logs its own "initialized randomly" warning
        try:
            clip = open_clip.create_model(name, pretrained=None, device=device)
        finally:
            quiet.setLevel(level)
    else:
        clip = open_clip.create_model(name, pretrained=tag, device=device)
    clip.eval()
    cfg = open_clip.get_model_preprocess_cfg(clip)
    size = cfg.get("size", getattr(clip.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(v) for v in cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", open_clip.OPENAI_DATASET_STD))
    source = str(Path(model).resolve()) if str(model).endswith(".json") else str(model)
    return LoadedCLIP(clip, name, tag, source, size, mean, std, open_clip.get_tokenizer(name))  # type: ignore[arg-type]
