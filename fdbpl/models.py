"""Loading open_clip models by name or config file, with real or random weights."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fdbpl.errors import InputValueError
from fdbpl.files import read_file_text, regular_file
from fdbpl.images import InputRecipe

__all__ = ["LoadedCLIP", "load_open_clip"]

_RANDOM = ("none", "random")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


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
    seed: int | None = None  # the seed of a random initialisation, None for real weights

    @property
    def input_recipe(self) -> InputRecipe:
        """The model's input as one value: side, mean and std."""
        return InputRecipe(self.image_size, self.mean, self.std)

    def recipe(self) -> dict[str, Any]:
        """The keyword arguments :func:`fdbpl.train.train` and evaluation take from a loaded model."""
        return {"tokenizer": self.tokenizer, "recipe": self.input_recipe}

    def identity(self) -> dict[str, Any]:
        """What a table records about the model that built it: name, weights, seed."""
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            **({"seed": self.seed} if self.seed is not None else {}),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "pretrained": self.pretrained,
            **({"seed": self.seed} if self.seed is not None else {}),
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _model_name(model: str) -> str:
    import open_clip

    if model.endswith(".json"):
        path = Path(model)
        text = read_file_text(model, "model", "an open_clip model config (JSON)")
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputValueError(f"model: {model} is not a JSON model config ({e})") from None
        missing = [
            k
            for k in ("embed_dim", "vision_cfg", "text_cfg")
            if not isinstance(config, dict) or k not in config
        ]
        if missing:
            raise InputValueError(
                f"model: {model} is not an open_clip model config (no {', '.join(missing)})"
            )
        open_clip.add_model_config(path)
        return path.stem
    if model not in open_clip.list_models():
        raise InputValueError(
            f"model: {model!r} is neither an open_clip model name (see open_clip.list_models()) nor a "
            "path to a model-config JSON file"
        )
    return model


def _weights(name: str, pretrained: str | os.PathLike[str] | None, from_config: bool) -> str:
    """The weights to load: ``"none"`` (random), an existing checkpoint path, or a known tag."""
    import open_clip

    if pretrained is None:
        if from_config:
            return "none"
        raise InputValueError(
            f"pretrained: {name} needs weights: an open_clip tag (e.g. 'openai') or a local checkpoint "
            "file; pass pretrained='none' (--pretrained none) to ask for random weights"
        )
    tag = str(pretrained)
    if tag.lower() in _RANDOM:
        return "none"
    path = Path(tag).expanduser()
    if path.exists() or any(sep in tag for sep in ("/", os.sep)) or path.suffix in _CHECKPOINT_SUFFIXES:
        regular_file(
            tag, "pretrained: checkpoint file", "open_clip or OpenAI weights (.pt, .bin, .safetensors)"
        )
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        valid = ", ".join(tags) if tags else "none (it has no published weights: pass a checkpoint file)"
        raise InputValueError(f"pretrained: {tag!r} is not a pretrained tag of {name}; valid: {valid}")
    return tag


def load_open_clip(
    model: str,
    pretrained: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoadedCLIP:
    """Create an open_clip model from a name or a config JSON, with weights from a tag or a file.

    Args:
        model: an open_clip model name (``"ViT-B-32"``) or the path of a model-config JSON
            file (registered with ``open_clip.add_model_config``; its stem is the name).
        pretrained: an open_clip pretrained tag (``"openai"``), the path of a local
            checkpoint, or ``"none"`` for random initialisation (with a warning: a random
            teacher or student teaches nothing real). A named model needs it (``None`` is
            an error); for a config JSON ``None`` means random.
        device: where to put the model.
        seed: the seed of the random initialisation, so a random model is the same on
            every call (the global random state is left as it was).

    Returns:
        :class:`LoadedCLIP`, the model in eval mode with its input size, normalisation and
        tokenizer.

    Raises:
        InputValueError: an unknown model, a missing weights argument for a named model, a
            mistyped tag (the valid ones are listed), a missing or unreadable checkpoint
            file, or weights that cannot be downloaded (pass a local file instead).
    """
    import open_clip

    from_config = str(model).endswith(".json")
    name = _model_name(str(model))
    tag = _weights(name, pretrained, from_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if tag == "none":
            warnings.warn(
                f"{name} is random-initialised (pretrained=none, seed {seed}): its predictions are noise; "
                "pass pretrained='openai' (or another tag) or a checkpoint path for real weights",
                UserWarning,
                stacklevel=2,
            )
            quiet = logging.getLogger()
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # open_clip logs its own "initialized randomly" warning
            try:
                clip = open_clip.create_model(name, pretrained=None)
            finally:
                quiet.setLevel(level)
        else:
            clip = _create_with_weights(name, tag)
    clip = clip.to(device).eval()
    recipe = InputRecipe.of_model(clip)
    source = str(Path(model).resolve()) if from_config else str(model)
    random_seed = int(seed) if tag == "none" else None
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedCLIP(clip, name, tag, source, recipe.size, recipe.mean, recipe.std, tokenizer, random_seed)


def _create_with_weights(name: str, tag: str) -> torch.nn.Module:
    import open_clip

    is_file = Path(tag).is_file()
    try:
        return open_clip.create_model(name, pretrained=tag)
    except Exception as e:  # open_clip and its downloaders raise many types
        if is_file:
            raise InputValueError(
                f"pretrained: {tag} is not a checkpoint of {name} ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        raise InputValueError(
            f"pretrained: the {tag!r} weights of {name} could not be loaded or downloaded "
            f"({type(e).__name__}: {str(e)[:200]}); download them elsewhere and pass the local file "
            "(--pretrained PATH)"
        ) from None
