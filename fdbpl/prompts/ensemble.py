"""The frozen text features of each class averaged over hand-written templates (a template
ensemble), as PromptSRC's text constraint and zero-shot logits use them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fdbpl.data.items import coop_classname
from fdbpl.errors import InputValueError
from fdbpl.prompts.text_tower import TextTower, Tokenizer

__all__ = [
    "PROMPTSRC_TEMPLATES",
    "TEMPLATE_SETS",
    "imagenet_templates",
    "named_templates",
    "template_ensemble",
]

Template = str | Callable[[str], str]

#: PromptSRC's frozen ensemble: the 60 templates of its ``trainers/imagenet_templates.py``
#: (a selection of OpenAI's ImageNet prompts, in its order).
PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)

#: The template lists :func:`template_ensemble` knows by name.
TEMPLATE_SETS = ("promptsrc", "openai_imagenet")


def imagenet_templates() -> list[Template]:
    """open_clip's copy of OpenAI's 80 ImageNet prompt templates (``"openai_imagenet"``)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


def named_templates(name: str) -> list[Template]:
    """A template list by name: ``"promptsrc"`` (:data:`PROMPTSRC_TEMPLATES`, 60) or
    ``"openai_imagenet"`` (:func:`imagenet_templates`, 80)."""
    if name == "promptsrc":
        return list(PROMPTSRC_TEMPLATES)
    if name == "openai_imagenet":
        return imagenet_templates()
    raise InputValueError(
        f"templates: expected one of {list(TEMPLATE_SETS)} or a list of templates, got {name!r}"
    )


@torch.no_grad()
def template_ensemble(
    model: nn.Module,
    classnames: Sequence[str],
    templates: Sequence[Template] | str = "promptsrc",
    tokenizer: Tokenizer | None = None,
    normalize_classnames: bool = True,
) -> torch.Tensor:
    """:math:`(C, D)` the model's ``encode_text`` of every class in every template, averaged
    over the templates (not normalised; PromptSRC averages the raw features).

    Args:
        model: a CLIP model (open_clip or OpenAI-clip).
        classnames: the C class names.
        templates: format strings with ``{}`` or callables of the class name, or the name of
            a list (:data:`TEMPLATE_SETS`); default ``"promptsrc"``, PromptSRC's 60.
        tokenizer: the model's tokenizer (default: the text tower's).
        normalize_classnames: read ``_`` in class names as a space, exactly as the prompt
            learners do (:func:`~fdbpl.data.coop_classname`; default), or keep them as given.

    Returns:
        The mean features in the model's dtype, at least float32 (a float16 model's
        features are averaged in float32, a float64 model's stay float64).
    """
    templates = named_templates(templates) if isinstance(templates, str) else list(templates)
    if not templates:
        raise InputValueError("templates: expected at least one template, got none")
    names = [coop_classname(c) for c in classnames] if normalize_classnames else list(classnames)
    tokenizer = tokenizer if tokenizer is not None else TextTower.from_model(model).default_tokenizer()
    device = next(model.parameters()).device
    total = None
    for template in templates:
        texts = [template(c) if callable(template) else template.format(c) for c in names]
        features = model.encode_text(tokenizer(texts).to(device))
        features = features.to(torch.promote_types(features.dtype, torch.float32))
        total = features if total is None else total + features
    return total / len(templates)
