"""Teachers: anything that maps crops to class probabilities, with the crop recipe it needs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fdbpl._checks import check_number
from fdbpl.errors import InputValueError
from fdbpl.logits import logit_scale_of

__all__ = ["TEACHER_TEMPLATE", "Teacher", "check_template", "clip_teacher"]

#: The teacher's prompt (the paper's).
TEACHER_TEMPLATE = "a photo of a {}."


class Teacher:
    """A callable teacher: ``(B, 3, S, S)`` normalised crops -> ``(B, C)`` probabilities.

    Wraps any callable (one CLIP, an ensemble, another classifier) together with the
    input size and normalisation its crops are rendered with, and a JSON-able description
    recorded in the table's manifest.

    Args:
        fn: the model; called under ``torch.no_grad()``.
        image_size: S, the side of the crops it takes.
        mean, std: per-channel normalisation of ``[0, 1]`` pixels.
        description: what to record about it (name, weights, template, ...).
        device: where crops are sent before calling ``fn``.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        description: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise InputValueError(f"mean and std: expected 3 values each, got {list(mean)} and {list(std)}")
        self.fn = fn
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.description = dict(description or {})
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        return self.fn(crops.to(self.device))


def check_template(template: str) -> str:
    """A prompt template with exactly one ``{}`` for the class name and no other braces."""
    rest = template.replace("{}", "") if isinstance(template, str) else "{"
    if not isinstance(template, str) or template.count("{}") != 1 or "{" in rest or "}" in rest:
        raise InputValueError(
            f"template: expected exactly one '{{}}' for the class name and no other braces, got {template!r}"
        )
    return template


def _check_distinct_prompts(classnames: Sequence[str], tokens: torch.Tensor) -> None:
    """Refuse two class names whose prompts are the same tokens (cut to the text tower's
    context length): the teacher could not tell them apart."""
    first: dict[tuple[int, ...], str] = {}
    for name, row in zip(classnames, tokens.tolist()):
        other = first.setdefault(tuple(row), name)
        if other != name:
            a, b = (n if len(n) <= 60 else n[:57] + "..." for n in (other, name))
            raise InputValueError(
                f"classnames: {a!r} and {b!r} give the same prompt once cut to the text tower's "
                f"{tokens.shape[-1]} tokens; shorten or rename one"
            )


def clip_teacher(
    model: torch.nn.Module,
    classnames: Sequence[str],
    tokenizer: Callable[[list[str]], torch.Tensor],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    template: str = TEACHER_TEMPLATE,
    temperature: float | None = None,
    description: dict[str, Any] | None = None,
) -> Teacher:
    """A CLIP zero-shot teacher: ``softmax(logit_scale * cos(image, text))`` over the classes.

    The text features of ``template`` for every class are computed once, here.

    Args:
        model: a CLIP with ``encode_image`` and ``encode_text`` (open_clip or OpenAI-clip).
        classnames: the C class names.
        tokenizer: the model's tokenizer.
        image_size, mean, std: the model's input recipe.
        template: the prompt, with ``{}`` for the class name (the paper: "a photo of a {}.").
        temperature: :math:`\\tau`; default: the model's own, ``1 / logit_scale.exp()``.
        description: recorded in the manifest (the template and temperature are added).
    """
    check_template(template)
    device = next(model.parameters()).device
    tokens = tokenizer([template.format(c) for c in classnames])
    _check_distinct_prompts(classnames, tokens)
    with torch.no_grad():
        text = model.encode_text(tokens.to(device))
        text = F.normalize(text.float(), dim=-1)
        if temperature is None:
            scale = float(logit_scale_of(model))
        else:
            scale = 1.0 / check_number("temperature", temperature, positive=True)

    def probabilities(crops: torch.Tensor) -> torch.Tensor:
        image = F.normalize(model.encode_image(crops).float(), dim=-1)
        return torch.softmax(scale * image @ text.T, dim=-1)

    info = dict(description or {})
    info.update(template=template, temperature=1.0 / scale)
    return Teacher(probabilities, image_size, mean, std, info, device)
