r"""Deep vision-language prompts in both spaces: VPT, IVLP, MaPLe and PromptSRC's learner.

- **Text** (``ivlp``, ``maple``, ``promptsrc``): the context tokens of each space are
  learned at layer 0 (initialised from the space's init phrase) and replaced by another
  learned set before each of the text transformer's blocks 1..J-1 (random, std 0.02), as
  IVLP and MaPLe do; one set per space and layer.
- **Vision** (all four): learned tokens concatenated with the ViT's class and patch tokens
  before ``ln_pre`` (as the authors' code does; ``vision_prompt_position``) and replaced
  before blocks 1..J-1 (VPT-deep; J = 1 is VPT-shallow), dropped before pooling; one set
  shared by the two spaces, since the losses take one image feature :math:`f(x)`. MaPLe's
  vision tokens at each layer are a learned linear projection of the *positive* space's
  text tokens at that layer (layer 0's projection initialised on its own, those of layers
  1..J-1 as copies of one, as MaPLe's authors do): the positive space is
  the one the teacher's knowledge is distilled into (Eq. 9) and the one that classifies at
  test time, so the image side is coupled to it, and the negative space stays free to say
  "no" without pulling the image features with it.
- ``vpt``: vision prompts only; each space's text is its fixed init phrase ("a photo of
  a {}" / "a photo of no {}": the contexts are frozen).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from fdbpl._checks import check_count
from fdbpl.errors import InputValueError
from fdbpl.prompts.base import NEGATIVE_INIT, POSITIVE_INIT, SPACES, PromptLearnerBase
from fdbpl.prompts.text_tower import Tokenizer, check_reproduced
from fdbpl.prompts.vision_tower import VISION_PROMPT_POSITIONS, VisionTower

__all__ = ["DEEP_DEFAULTS", "DEEP_METHODS", "DeepPromptLearner"]

#: Each deep method's base-to-new defaults, from its authors' ViT-B/16 configs: VPT's
#: (multimodal-prompt-learning) has 8 vision tokens at depth 12; IVLP's and PromptSRC's
#: (PromptSRC's repository) have 4 text and 4 vision tokens at depth 9; MaPLe's has 2
#: tokens at depth 9. The first ``text_ctx`` tokens of the init phrase learn, the rest of
#: the phrase stays words of the prompt.
DEEP_DEFAULTS: dict[str, dict[str, int]] = {
    "vpt": {"depth": 12, "text_ctx": 4, "vision_ctx": 8},
    "ivlp": {"depth": 9, "text_ctx": 4, "vision_ctx": 4},
    "maple": {"depth": 9, "text_ctx": 2, "vision_ctx": 2},
    "promptsrc": {"depth": 9, "text_ctx": 4, "vision_ctx": 4},
}

#: States saved before the position was recorded (fdbpl 0.1) were trained with this order.
_UNRECORDED_POSITION = "after_ln_pre"

#: The deep-prompt methods :class:`DeepPromptLearner` builds.
DEEP_METHODS = tuple(DEEP_DEFAULTS)


def _deep_shape(
    method: str, depth: int | None, text_ctx: int | None, vision_ctx: int | None
) -> tuple[int, int, int]:
    """``(depth, text_ctx, vision_ctx)``: the given ones checked, the method's defaults for
    ``None`` (:data:`DEEP_DEFAULTS`); MaPLe's vision tokens are its text tokens."""
    defaults = DEEP_DEFAULTS[method]
    depth = check_count("depth", defaults["depth"] if depth is None else depth)
    text_ctx = check_count("text_ctx", defaults["text_ctx"] if text_ctx is None else text_ctx)
    vision_ctx = defaults["vision_ctx"] if vision_ctx is None else vision_ctx
    if method == "maple":
        if vision_ctx != text_ctx and vision_ctx != defaults["vision_ctx"]:
            raise InputValueError(
                f"vision_ctx: MaPLe projects each text token to a vision token, so vision_ctx is "
                f"text_ctx ({text_ctx}); got {vision_ctx}"
            )
        vision_ctx = text_ctx
    vision_ctx = check_count("vision_ctx", vision_ctx, minimum=0)
    if method == "vpt" and vision_ctx == 0:
        raise InputValueError(
            "vision_ctx: the vpt learner learns vision tokens only (its text is fixed); vision_ctx=0 leaves it "
            "nothing to learn"
        )
    return depth, text_ctx, vision_ctx


class DeepPromptLearner(PromptLearnerBase):
    r"""Deep prompts in the text tower (per space) and the image tower (shared), over a frozen CLIP.

    :meth:`forward` gives both spaces' class-level text features :math:`(C, D)`, as
    :class:`DualPromptLearner` does; :meth:`encode_image` gives the prompted image features
    :math:`(N, D)` (the image tower runs with gradients into the vision prompts, the CLIP
    weights stay frozen). :class:`~fdbpl.prompts.PromptModel` combines the two.

    Args:
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` or OpenAI-clip model with a ViT
            image tower (a ResNet tower is refused: it takes no prompt tokens).
        classnames: the C class names.
        method: ``"vpt"``, ``"ivlp"``, ``"maple"`` or ``"promptsrc"`` (:data:`DEEP_METHODS`).
        tokenizer: as for :class:`DualPromptLearner`.
        depth: J, the layers that get prompts (1..the tower's blocks), in both towers.
        text_ctx: learned text tokens per space and layer (at most the init phrase's tokens
            when there is one; the first ``text_ctx`` of them learn).
        vision_ctx: learned vision tokens per layer (MaPLe: equals ``text_ctx``).
        positive_init, negative_init: the spaces' init phrases (``None``: random contexts
            of ``text_ctx`` tokens).
        truncate, class_chunk_size, normalize_classnames, share_prefix: as for
            :class:`DualPromptLearner`; the shared prompt start (start token and context)
            carries the deep text tokens, which are the same for every class, so it is
            computed once per space at every layer.
        vision_prompt_position: where the layer-0 vision tokens join the image sequence:
            ``"before_ln_pre"`` (default; with the class and patch tokens, then the ViT's
            ``ln_pre`` over the whole sequence, as the authors' code of VPT, IVLP, MaPLe and
            PromptSRC does) or ``"after_ln_pre"`` (appended to the normalised sequence, the
            order of fdbpl 0.1; a state saved without this entry is read as that one). See
            :data:`~fdbpl.prompts.vision_tower.VISION_PROMPT_POSITIONS`.
        gradient_checkpointing: recompute each image-tower block in the backward pass
            instead of keeping its activations (the vision prompts need gradients through
            the whole image tower, whose activations grow with the batch); the same
            result for about one more image forward. Not part of the state dict; set it
            any time. For many classes, ``class_chunk_size`` bounds the text pass.

    Defaults are each method's (:data:`DEEP_DEFAULTS`). At construction the text pass (with
    the layer-0 tokens only) is checked against the model's ``encode_text`` and the image
    pass with no prompts against its ``encode_image``; a tower either does not reproduce
    is refused (:class:`~fdbpl.prompts.UnsupportedModelError`).
    """

    prompts_images = True
    class_specific_contexts = False
    _partial_phrase = True

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: Sequence[str],
        method: str = "ivlp",
        tokenizer: Tokenizer | None = None,
        depth: int | None = None,
        text_ctx: int | None = None,
        vision_ctx: int | None = None,
        positive_init: str | None = POSITIVE_INIT,
        negative_init: str | None = NEGATIVE_INIT,
        truncate: bool = True,
        class_chunk_size: int | None = None,
        normalize_classnames: bool = True,
        gradient_checkpointing: bool = False,
        share_prefix: bool = True,
        vision_prompt_position: Literal["before_ln_pre", "after_ln_pre"] = "before_ln_pre",
    ) -> None:
        if method not in DEEP_DEFAULTS:
            raise InputValueError(f"method: expected one of {list(DEEP_METHODS)}, got {method!r}")
        if vision_prompt_position not in VISION_PROMPT_POSITIONS:
            raise InputValueError(
                f"vision_prompt_position: expected one of {list(VISION_PROMPT_POSITIONS)}, "
                f"got {vision_prompt_position!r}"
            )
        depth, text_ctx, vision_ctx = _deep_shape(method, depth, text_ctx, vision_ctx)
        vision = VisionTower.from_model(clip_model)  # refuses a ResNet tower
        super().__init__(
            clip_model,
            classnames,
            tokenizer=tokenizer,
            n_ctx=dict.fromkeys(SPACES, text_ctx),
            positive_init=positive_init,
            negative_init=negative_init,
            truncate=truncate,
            class_chunk_size=class_chunk_size,
            share_prefix=False,
            normalize_classnames=normalize_classnames,
        )
        text_layers = len(self._tower.transformer.resblocks)
        if depth > min(text_layers, vision.layers):
            raise InputValueError(
                f"depth: the towers have {text_layers} text and {vision.layers} vision blocks; got depth={depth}"
            )
        self.method = method
        self.depth = depth
        self.text_ctx = text_ctx
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.vision_ctx = vision_ctx
        self.vision_prompt_position = vision_prompt_position
        self._vision = vision
        for p in vision.parameters():
            p.requires_grad_(False)
        self._make_deep_prompts()
        self._check_vision_tower(clip_model)
        if share_prefix and self._tower.can_share_prefix:  # deep text tokens are class-agnostic too
            self.shares_prefix = self._shared_prefix_agrees()

    def _make_deep_prompts(self) -> None:
        """The deep text contexts (not for VPT: its text is each space's fixed phrase) and the
        vision prompts (MaPLe: projections of the text prompts), initialised as the authors'."""
        dtype, device = self.positive_context.dtype, self.positive_context.device
        width, vision_width, depth = self._tower.width, self._vision.width, self.depth
        if self.method == "vpt":
            self.positive_context.requires_grad_(False)
            self.negative_context.requires_grad_(False)
        else:
            for space in SPACES:
                deep = torch.empty(depth - 1, self.n_ctx[space], width, device=device, dtype=dtype)
                setattr(self, f"{space}_deep_context", nn.Parameter(nn.init.normal_(deep, std=0.02)))
        if (
            self.method == "maple"
        ):  # layer 0's projection on its own, the deeper ones copies of one (MaPLe's init)
            deeper = nn.Linear(width, vision_width)
            projections = [nn.Linear(width, vision_width), *(copy.deepcopy(deeper) for _ in range(depth - 1))]
            self.vision_projection = nn.ModuleList(projections).to(device=device, dtype=dtype)
        else:
            tokens = torch.empty(depth, self.vision_ctx, vision_width, device=device, dtype=dtype)
            self.vision_context = nn.Parameter(nn.init.normal_(tokens, std=0.02))

    def _check_vision_tower(self, clip_model: nn.Module) -> None:
        """Refuse an image tower :class:`VisionTower` does not reproduce (see the class docs)."""
        visual = self._vision.visual
        size = visual.image_size if hasattr(visual, "image_size") else None
        side = size[0] if isinstance(size, (tuple, list)) else size or visual.input_resolution
        g = torch.Generator().manual_seed(0)
        images = torch.randn(2, 3, side, side, generator=g).to(visual.conv1.weight)  # its device and dtype
        check_reproduced(
            "image",
            visual.transformer.resblocks,
            lambda: clip_model.encode_image(images),
            lambda: self._vision.encode(images),
            self._vision.dtype,
            "encode_image",
            "a plain image",
        )

    # -- the prompts ----------------------------------------------------------------------

    def text_prompts(self, space: str) -> list[torch.Tensor]:
        """One space's text tokens at layers 0..J-1, each :math:`(n, W)` (layer 0: its context)."""
        tokens = [getattr(self, f"{space}_context")]
        if self.method != "vpt":
            tokens += list(getattr(self, f"{space}_deep_context").unbind(0))
        return tokens

    def vision_prompts(self) -> list[torch.Tensor]:
        """The vision tokens at layers 0..J-1, each :math:`(n_v, W_v)` (MaPLe: projected from
        the positive space's text tokens)."""
        if self.method == "maple":
            return [proj(t) for proj, t in zip(self.vision_projection, self.text_prompts("positive"))]
        return list(self.vision_context.unbind(0))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Prompted image features :math:`(N, D)`, not normalised (gradients reach the vision
        prompts; the CLIP weights are frozen)."""
        return self._vision.encode(
            images.to(self.positive_context.device),
            self.vision_prompts(),
            self.gradient_checkpointing,
            self.vision_prompt_position,
        )

    # -- the text pass --------------------------------------------------------------------

    def _deep(self, space: str) -> list[torch.Tensor]:
        return self.text_prompts(space)[1:]

    def extra_repr(self) -> str:
        return (
            f"method={self.method!r}, depth={self.depth}, vision_ctx={self.vision_ctx}, "
            f"vision_prompt_position={self.vision_prompt_position!r}, {super().extra_repr()}"
        )
