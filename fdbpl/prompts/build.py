"""One call for every base method: :func:`build_learner` and the :class:`PromptModel` it returns."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fdbpl.errors import InputValueError
from fdbpl.logits import clip_logits, logit_scale_of
from fdbpl.prompts.base import ClassSelection, PromptLearnerBase
from fdbpl.prompts.coop import DualPromptLearner
from fdbpl.prompts.text_tower import Tokenizer

__all__ = ["PromptModel", "build_learner", "learner_from_state_dict"]


def _learner_class(method: str) -> type[PromptLearnerBase]:
    """The registered method's learner class (read at call time: methods registered after
    import are found). The registry imports the learners, so it is imported here, not above."""
    from fdbpl.methods import method_spec

    return method_spec(method).learner


class PromptModel(nn.Module):
    """A base method's prompt learner over a frozen CLIP: ``forward(images)`` gives
    ``(image_features, positive, negative)``, ready for :class:`~fdbpl.losses.FDBPLLoss`.

    For ``coop`` and ``cocoop`` the image encoder runs frozen, under ``torch.no_grad()``;
    for the deep methods (``vpt``, ``ivlp``, ``maple``, ``promptsrc``) it runs with the
    learner's vision prompts and gradients into them. The text features are :math:`(C, D)`,
    or per image :math:`(N, C, D)` for ``cocoop`` (the losses take both). The CLIP model is not a
    submodule: :meth:`state_dict` holds the learner only (under ``learner.``), and every CLIP
    parameter is set to ``requires_grad=False``, so an optimiser over :meth:`parameters`
    trains the prompts alone.

    Args:
        learner: the prompt learner (e.g. from :func:`build_learner`).
        clip_model: the CLIP model it was built on (its ``encode_image`` is used).
    """

    def __init__(self, learner: PromptLearnerBase, clip_model: nn.Module) -> None:
        super().__init__()
        self.learner = learner
        for p in clip_model.parameters():
            p.requires_grad_(False)
        self._clip = [clip_model]  # a list: not registered, saved or moved with this module

    @property
    def method(self) -> str:
        return self.learner.method

    @property
    def prompts_images(self) -> bool:
        """Whether the learner prompts the image tower (VPT, IVLP, MaPLe, PromptSRC): then
        :meth:`forward` needs the images, and gradients flow through the image tower."""
        return bool(self.learner.prompts_images)

    @property
    def per_image(self) -> bool:
        """Whether the text features are per image, :math:`(N, C, D)` (CoCoOp)."""
        return bool(self.learner.per_image)

    @property
    def clip_model(self) -> nn.Module:
        return self._clip[0]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The image features :math:`(N, D)` of a batch of images: with the learner's vision
        prompts when it has them (gradients flow into them), else the frozen encoder's."""
        if self.prompts_images:
            return self.learner.encode_image(images)  # type: ignore[attr-defined]
        with torch.no_grad():
            return self.clip_model.encode_image(images)

    def forward(
        self,
        images: torch.Tensor | None = None,
        *,
        image_features: torch.Tensor | None = None,
        classes: ClassSelection = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_features, positive_text_features, negative_text_features)``.

        Args:
            images: :math:`(N, 3, H, W)` preprocessed images, or
            image_features: :math:`(N, D)` the frozen encoder's features of them (e.g. a
                table's stored ones); exactly one of the two.
            classes: ``None`` for all classes, or a subset as ids or names.

        Returns:
            Image features :math:`(N, D)` and both spaces' text features, :math:`(C', D)`
            (``coop``) or :math:`(N, C', D)` (``cocoop``), not normalised.
        """
        if (images is None) == (image_features is None):
            raise InputValueError("PromptModel: pass images or image_features (exactly one of them)")
        if self.prompts_images and images is None:
            raise InputValueError(
                f"image_features: the {self.method!r} learner prompts the image tower, so it needs the "
                "images themselves (stored features are the unprompted tower's)"
            )
        if image_features is None:
            image_features = self.image_features(images)  # type: ignore[arg-type]
        if self.per_image:
            positive, negative = self.learner(image_features, classes)
        else:
            positive, negative = self.learner(classes)
        return image_features, positive, negative

    def logits(
        self,
        images: torch.Tensor | None = None,
        *,
        image_features: torch.Tensor | None = None,
        classes: ClassSelection = None,
        logit_scale: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative logits (Eq. 7-8), each :math:`(N, C')`; ``logit_scale``
        defaults to the model's ``logit_scale.exp()``."""
        f, positive, negative = self(images, image_features=image_features, classes=classes)
        scale = logit_scale_of(self.clip_model) if logit_scale is None else logit_scale
        return clip_logits(f, positive, scale), clip_logits(f, negative, scale)

    @classmethod
    def from_state_dict(
        cls,
        clip_model: nn.Module,
        state_dict: Mapping[str, Any],
        classnames: Sequence[str] | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> PromptModel:
        """Rebuild from a :class:`PromptModel`'s state dict (or a bare learner's): the method,
        its options and its prompts; ``classnames`` as in :func:`learner_from_state_dict`."""
        prefix = "learner."
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        return cls(learner_from_state_dict(clip_model, state_dict, classnames, tokenizer), clip_model)

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


def build_learner(
    method: str, clip_model: nn.Module, classnames: Sequence[str], **options: Any
) -> PromptModel:
    """The prompt learner of a base method, over a frozen CLIP, with one interface.

    Args:
        method: a registered base method (:func:`fdbpl.methods.method_names`): ``"coop"``
            and ``"kgcoop"`` (:class:`~fdbpl.prompts.DualPromptLearner`), ``"cocoop"``
            (:class:`~fdbpl.prompts.CoCoOpDualPromptLearner`), ``"vpt"``, ``"ivlp"``,
            ``"maple"``, ``"promptsrc"`` (:class:`~fdbpl.prompts.DeepPromptLearner`), or
            one registered with :func:`fdbpl.methods.register_method`.
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` or OpenAI-clip model.
        classnames: the C class names.
        **options: the learner's own options (``tokenizer``, ``n_ctx``, ``positive_init``,
            ``class_chunk_size``, ``meta_net`` for ``cocoop``, ...).

    Returns:
        A :class:`PromptModel`: ``model(images)`` gives ``(image_features, positive,
        negative)`` for :class:`~fdbpl.losses.FDBPLLoss`; ``model.learner`` is the learner.

    Raises:
        InputValueError: an unknown method, or an option the method's learner does not take.

    Example:
        >>> import open_clip, torch
        >>> from fdbpl.prompts import build_learner
        >>> model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64,
        ...     layers=1), text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
        >>> prompts = build_learner("cocoop", model, ["cat", "dog"])
        >>> f, positive, negative = prompts(torch.randn(4, 3, 32, 32))
        >>> f.shape, positive.shape
        (torch.Size([4, 32]), torch.Size([4, 2, 32]))
    """
    learner_class = _learner_class(method)
    accepted = inspect.signature(learner_class.__init__).parameters
    unknown = sorted(set(options) - set(accepted) - {"self", "clip_model", "classnames", "method"})
    if unknown:
        raise InputValueError(
            f"build_learner: the {method!r} learner ({learner_class.__name__}) takes no option(s) {unknown}"
        )
    if "method" in accepted:
        options = {**options, "method": method}
    return PromptModel(learner_class(clip_model, classnames, **options), clip_model)


def learner_from_state_dict(
    clip_model: nn.Module,
    state_dict: Mapping[str, Any],
    classnames: Sequence[str] | None = None,
    tokenizer: Tokenizer | None = None,
) -> PromptLearnerBase:
    """Rebuild the learner a state dict was saved from, whatever its method (recorded in its
    extra state; states without one are CoOp's, :class:`DualPromptLearner`'s). See
    :meth:`PromptLearnerBase.from_state_dict`."""
    config = state_dict.get("_extra_state")
    method = (
        config.get("method", DualPromptLearner.method)
        if isinstance(config, dict)
        else DualPromptLearner.method
    )
    return _learner_class(method).from_state_dict(clip_model, state_dict, classnames, tokenizer)
