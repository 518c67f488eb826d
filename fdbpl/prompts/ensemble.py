"""The frozen text features of each class averaged over hand-written templates (a template
ensemble), as PromptSRC's text constraint and zero-shot logits use them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fdbpl.prompts.text_tower import TextTower, Tokenizer

__all__ = ["imagenet_templates", "template_ensemble"]

Template = str | Callable[[str], str]


def imagenet_templates() -> list[Template]:
    """open_clip's copy of OpenAI's 80 ImageNet prompt templates (PromptSRC's ensemble is a
    list of the same kind)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


@torch.no_grad()
def template_ensemble(
    model: nn.Module,
    classnames: Sequence[str],
    templates: Sequence[Template] | None = None,
    tokenizer: Tokenizer | None = None,
) -> torch.Tensor:
    """:math:`(C, D)` the model's ``encode_text`` of every class in every template, averaged
    over the templates (not normalised; PromptSRC averages the raw features).

    Args:
        model: a CLIP model (open_clip or OpenAI-clip).
        classnames: the C class names.
        templates: format strings with ``{}`` or callables of the class name; default
            :func:`imagenet_templates`.
        tokenizer: the model's tokenizer (default: the text tower's).
    """
    templates = list(templates) if templates is not None else imagenet_templates()
    tokenizer = tokenizer if tokenizer is not None else TextTower.from_model(model).default_tokenizer()
    device = next(model.parameters()).device
    total = None
    for template in templates:
        texts = [template(c) if callable(template) else template.format(c) for c in classnames]
        features = model.encode_text(tokenizer(texts).to(device)).float()
        total = features if total is None else total + features
    assert total is not None, "templates: expected at least one"
    return total / len(templates)
