"""A uniform view of the ViT image encoder of open_clip and OpenAI-``clip`` models, with
deep visual prompts (VPT).

VPT (Jia et al., ECCV 2022) appends learnable tokens to the sequence of a ViT after the
class and patch tokens: at layer 0 they are appended, at layers 1..J-1 the hidden states
at their positions are replaced by another set (VPT-deep; J = 1 is VPT-shallow), and they
are dropped before pooling. Where the layer-0 tokens join matters, because the ViT
normalises its input sequence (``ln_pre``) before block 0: the code of the deep methods'
authors (multimodal-prompt-learning's and PromptSRC's ``clip/model.py``, behind every
number VPT, IVLP, MaPLe and PromptSRC report) concatenates them with the class and patch
tokens (after the positional embeddings) and then applies ``ln_pre`` to the whole
sequence: ``"before_ln_pre"``, the default. ``"after_ln_pre"`` appends them to the
normalised sequence instead (fdbpl 0.1's order; the features differ by a few percent).
:class:`VisionTower` finds the pieces of the two ViT layouts in use and runs
``encode_image`` with such prompts; with no prompts it is ``encode_image``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fdbpl.errors import InputValueError, UnsupportedModelError

__all__ = ["VISION_PROMPT_POSITIONS", "VisionTower"]

#: Where the layer-0 vision prompts join the sequence: ``"before_ln_pre"`` (with the class
#: and patch tokens, then ``ln_pre``: the deep methods' authors' code; the default) or
#: ``"after_ln_pre"`` (appended to the normalised sequence: fdbpl 0.1).
VISION_PROMPT_POSITIONS = ("before_ln_pre", "after_ln_pre")


class VisionTower:
    """The pieces of a CLIP ViT image encoder, and ``encode_image`` with appended prompts.

    Build one with :meth:`from_model`; it holds references to the model's modules (it is
    not an ``nn.Module``). Models whose image tower is not a plain ViT (ResNets, attention
    pooling) are refused with :class:`UnsupportedModelError`.

    Attributes:
        kind: ``"open_clip"`` or ``"openai_clip"``.
        width: the transformer width (the size of a visual prompt token).
        layers: the number of transformer blocks (the largest prompt depth).
    """

    def __init__(self, kind: str, visual: nn.Module, dtype: torch.dtype) -> None:
        self.kind = kind
        self.visual = visual
        self.dtype = dtype
        self.width = visual.conv1.out_channels
        self.layers = len(visual.transformer.resblocks)

    @classmethod
    def from_model(cls, model: nn.Module) -> VisionTower:
        """Find the ViT of an open_clip ``CLIP`` / ``CustomTextCLIP`` or an OpenAI-clip model.

        Raises:
            UnsupportedModelError: a ResNet image tower, or a ViT variant this cannot run
                (attention pooling, a pooling type other than the class token or the mean).
        """
        visual = getattr(model, "visual", None)
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
        if visual is None or not all(hasattr(visual, n) for n in needed):
            kind = type(visual).__name__ if visual is not None else "no image tower"
            raise UnsupportedModelError(
                f"vision prompts need a ViT image tower (conv1, class_embedding, positional_embedding, ln_pre, "
                f"transformer, ln_post); this model has {kind} (a ResNet tower cannot take prompt tokens)"
            )
        if not hasattr(visual.transformer, "resblocks"):
            raise UnsupportedModelError(f"{type(visual).__name__}.transformer has no resblocks")
        if getattr(visual, "attn_pool", None) is not None:
            raise UnsupportedModelError("vision prompts on a ViT with attention pooling are not supported")
        if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
            raise UnsupportedModelError(
                f"vision prompts with pool_type {visual.pool_type!r} are not supported"
            )
        if hasattr(visual, "_embeds"):
            return cls("open_clip", visual, visual.conv1.weight.dtype)
        dtype = (
            model.dtype
            if isinstance(getattr(model, "dtype", None), torch.dtype)
            else visual.conv1.weight.dtype
        )
        return cls("openai_clip", visual, dtype)

    @property
    def output_dim(self) -> int:
        proj = getattr(self.visual, "proj", None)
        return self.width if proj is None else int(proj.shape[1])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.visual.parameters())

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Class and patch tokens with positions, before ``ln_pre``: (B, 1 + P, W)."""
        v = self.visual
        if self.kind == "open_clip":
            x = v.conv1(images)
        else:
            x = v.conv1(images.type(self.dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls_token = v.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([cls_token, x], dim=1) + v.positional_embedding.to(x.dtype)
        dropout = getattr(v, "patch_dropout", None)  # open_clip's (identity unless training with it)
        return x if dropout is None else dropout(x)

    def encode(
        self,
        images: torch.Tensor,
        prompts: Sequence[torch.Tensor] | None = None,
        checkpoint_blocks: bool = False,
        position: str = "before_ln_pre",
    ) -> torch.Tensor:
        """``encode_image`` with VPT prompts.

        Args:
            images: :math:`(B, 3, H, W)` preprocessed images.
            prompts: ``prompts[j]`` :math:`(n, W)` (or :math:`(B, n, W)`): appended after the
                class and patch tokens before block 0 (j = 0), and replacing those positions
                before block j (j = 1 .. len - 1); dropped before pooling. ``None`` or empty:
                plain ``encode_image``.
            checkpoint_blocks: keep no activations inside the blocks; each block is
                recomputed in the backward pass (gradient checkpointing: less memory, one
                more forward). The result is the same.
            position: where ``prompts[0]`` joins (:data:`VISION_PROMPT_POSITIONS`):
                ``"before_ln_pre"`` (the authors' order: concatenated, then ``ln_pre``
                over the whole sequence) or ``"after_ln_pre"``.

        Returns:
            :math:`(B, D)` image features, not normalised.
        """
        if position not in VISION_PROMPT_POSITIONS:
            raise InputValueError(
                f"position: expected one of {list(VISION_PROMPT_POSITIONS)}, got {position!r}"
            )
        prompts = list(prompts or [])
        if len(prompts) > self.layers:
            raise UnsupportedModelError(
                f"{len(prompts)} layers of vision prompts, the ViT has {self.layers} blocks"
            )
        x = self._tokens(images)
        tokens = x.shape[1]
        ln_pre = self.visual.ln_pre
        if not prompts:
            x = ln_pre(x)
        elif position == "before_ln_pre":
            x = ln_pre(torch.cat([x, _expanded(prompts[0], x)], dim=1))
        else:
            x = ln_pre(x)
            x = torch.cat([x, _expanded(prompts[0], x)], dim=1)
        seq_first = self.kind == "openai_clip" or not getattr(self.visual.transformer, "batch_first", False)
        for j, blk in enumerate(self.visual.transformer.resblocks):
            if 1 <= j < len(prompts):
                x = torch.cat([x[:, :tokens], _expanded(prompts[j], x)], dim=1)
            if checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(_run_block, blk, x, seq_first, use_reentrant=False)
            else:
                x = _run_block(blk, x, seq_first)
        x = x[:, :tokens]
        return self._pool(x)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        v = self.visual
        if self.kind == "openai_clip":
            pooled = v.ln_post(x[:, 0])
        else:
            pooled_first = getattr(v, "final_ln_after_pool", False)
            if not pooled_first:
                x = v.ln_post(x)
            pooled = x[:, 1:].mean(dim=1) if getattr(v, "pool_type", "tok") == "avg" else x[:, 0]
            if pooled_first:
                pooled = v.ln_post(pooled)
        proj = getattr(v, "proj", None)
        return pooled if proj is None else pooled @ proj


def _expanded(prompt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One layer's prompt tokens, :math:`(n, W)` or :math:`(B, n, W)`, as :math:`(B, n, W)` in x's dtype."""
    return prompt.to(x.dtype).expand(x.shape[0], *prompt.shape[-2:])


def _run_block(blk: nn.Module, x: torch.Tensor, seq_first: bool) -> torch.Tensor:
    """One block on batch-first ``x``, whatever layout the block takes."""
    return blk(x.transpose(0, 1)).transpose(0, 1) if seq_first else blk(x)
